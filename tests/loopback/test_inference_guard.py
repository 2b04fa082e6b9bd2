"""limits.Guard on a real mutual-TLS gRPC server (in this process, no Concrete): health and reflection only.

Silent calls (unary ones too: a client can open a unary method and never send
its message) are ended after ``limits.message_idle_s`` with a clear status; an
owner at its call or stream limit is refused at once while others are served;
the reader threads end with their calls; idle connections are closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.config import Limits
from fedfhe_inference.identity import Identity
from fedfhe_inference.limits import READER_THREAD, Guard, server_options

pytestmark = pytest.mark.timeout(120)
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
FAST = replace(Limits(), message_idle_s=1.5, max_calls_per_owner=2, max_streams_per_owner=1)


@dataclass
class Guarded:
    server: grpc.Server
    guard: Guard
    port: int
    pki: Path

    def channel(self, owner: str) -> grpc.Channel:
        d = self.pki
        creds = grpc.ssl_channel_credentials(
            root_certificates=(d / "ca.crt").read_bytes(), private_key=(d / f"{owner}.key").read_bytes(),
            certificate_chain=(d / f"{owner}.crt").read_bytes(),
        )
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds)


def start(pki: Path, limits: Limits = FAST) -> Guarded:
    guard = Guard(Identity.from_file(pki / "ca.crt"), limits)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[guard],
                         options=server_options(limits))
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    creds = grpc.ssl_server_credentials(
        [((pki / "inference.key").read_bytes(), (pki / "inference.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(), require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return Guarded(server, guard, port, pki)


@pytest.fixture
def guarded(pki: Path) -> Iterator[Guarded]:
    g = start(pki)
    yield g
    g.server.stop(0).wait()


def silent(release: threading.Event) -> Iterator[Any]:
    """A request stream that sends nothing until ``release`` (then ends)."""
    release.wait(60)
    return
    yield  # pragma: no cover - makes this a generator


def readers(guard: Guard) -> int:
    """Readers still inside a call (reader threads are pooled: idle ones wait for the next call, a few at most)."""
    idle_threads = sum(1 for t in threading.enumerate() if t.name == READER_THREAD) - guard.readers.busy
    assert idle_threads <= guard.readers.keep_idle
    return guard.readers.busy


def check(ch: grpc.Channel, timeout: float = 10) -> int:
    return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def test_a_silent_unary_call_is_ended_after_the_idle_timeout(guarded):
    """A unary method opened without its message: before, it held an RPC thread for ever."""
    release = threading.Event()
    try:
        with guarded.channel("alice") as ch:
            opened = ch.stream_unary(CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                     response_deserializer=health_pb2.HealthCheckResponse.FromString)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                opened(silent(release))  # no client deadline
            elapsed = time.monotonic() - started
    finally:
        release.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message from the client for 1.5s" in info.value.details()
    assert elapsed < 30
    wait_until(lambda: readers(guarded.guard) == 0, 20, "the readers to be released with their calls")
    assert guarded.guard.slots.in_use("alice") == (0, 0)


def test_an_owner_at_its_limit_is_refused_at_once_and_others_are_served(guarded):
    release = threading.Event()
    try:
        with guarded.channel("alice") as a, guarded.channel("bob") as b:
            opened = a.stream_unary(CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
            held = [opened.future(silent(release)) for _ in range(FAST.max_calls_per_owner)]
            wait_until(lambda: guarded.guard.slots.in_use("alice")[0] == FAST.max_calls_per_owner, 20,
                       "alice's silent calls to take her slots")
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                check(a)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limits.max_calls_per_owner" in info.value.details()
            assert check(b) == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - started < 5 and not any(f.done() for f in held)
            for f in held:
                assert f.exception(30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            wait_until(lambda: guarded.guard.slots.in_use("alice") == (0, 0), 10, "alice's slots to be freed")
            assert check(a) == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()


def test_watch_streams_count_against_the_stream_limit_and_are_released(guarded):
    """Health Watch stays non-blocking (no RPC thread held) and still takes one of the owner's stream slots."""
    with guarded.channel("alice") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        first = stub.Watch(health_pb2.HealthCheckRequest())
        assert next(first).status == health_pb2.HealthCheckResponse.SERVING
        assert guarded.guard.slots.in_use("alice") == (1, 1)
        with pytest.raises(grpc.RpcError) as info:
            next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_streams_per_owner" in info.value.details()
        first.cancel()
        wait_until(lambda: guarded.guard.slots.in_use("alice") == (0, 0), 10, "the cancelled Watch to free its slot")
        again = stub.Watch(health_pb2.HealthCheckRequest())
        assert next(again).status == health_pb2.HealthCheckResponse.SERVING
        again.cancel()


def test_reflection_goes_through_the_guard(guarded):
    release = threading.Event()
    try:
        with guarded.channel("alice") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=10)
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert "grpc.health.v1.Health" in names
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ServerReflectionInfo(silent(release)))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    wait_until(lambda: readers(guarded.guard) == 0, 20, "the readers to be released")


def test_idle_connections_are_closed(pki):
    g = start(pki, replace(FAST, connection_idle_s=1.0))
    try:
        states: list[grpc.ChannelConnectivity] = []
        with g.channel("alice") as ch:
            ch.subscribe(states.append, try_to_connect=False)
            assert check(ch) == health_pb2.HealthCheckResponse.SERVING
            # Callbacks arrive on gRPC's own thread, late under load: the channel's first IDLE (before it
            # connected) must not count, only an IDLE after READY.
            ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE
            wait_until(lambda: ready in states and idle in states[states.index(ready):], 30,
                       "the node to close the idle connection (GOAWAY): READY, then IDLE")
    finally:
        g.server.stop(0).wait()


def test_a_flood_of_refused_calls_is_turned_away_at_the_door_and_others_are_served(pki, caplog):
    """alice asks again and again for a service the node does not have (NOT_FOUND, her fault): after her burst
    she is refused at admission with the reason, without a slot or a log line; bob is served throughout."""
    limits = replace(FAST, refusal_burst=5, refusals_per_owner_per_s=1.0)
    g = start(pki, limits)
    taken: list[str] = []
    take = g.guard.slots.take
    g.guard.slots.take = lambda owner, streaming: (taken.append(owner), take(owner, streaming))[1]  # type: ignore
    caplog.set_level("WARNING", logger="fedfhe.inference.limits")
    try:
        with g.channel("alice") as a, g.channel("bob") as b:
            stub = health_pb2_grpc.HealthStub(a)
            codes = []
            for _ in range(8):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Check(health_pb2.HealthCheckRequest(service="no-such-service"), timeout=10)
                codes.append(info.value.code())
            assert codes[:5] == [grpc.StatusCode.NOT_FOUND] * 5
            assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
            assert "too many refused calls" in info.value.details()
            assert taken == ["alice"] * 5  # the three turned away at the door never took a slot
            warnings = [r.getMessage() for r in caplog.records]
            assert len(warnings) == 1 and "spent its refused-call burst" in warnings[0], warnings
            assert check(b) == health_pb2.HealthCheckResponse.SERVING
            assert g.guard.slots.in_use("alice") == (0, 0)
            # Her budget refills at 1 a second: a good call goes through again.
            wait_until(lambda: g.guard.refusals.wait_s("alice") == 0, 10, "alice's refusal budget to refill")
            assert check(a) == health_pb2.HealthCheckResponse.SERVING
    finally:
        g.server.stop(0).wait()
