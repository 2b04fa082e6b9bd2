"""An owner's client survives an inference node that refuses UNAVAILABLE (issue 29): gRPC's retry policy repeats the
call with backoff, over several nodes round_robin spreads the calls, and a node the CRL check cannot reach is left
out of the channel, never used unchecked. A real gRPC server with mutual TLS on loopback, the project's PKI."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from fedfhe_common.pki.ca import init_ca, issue
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.procs import free_port
from fedfhe_owner.config import InferenceEndpoint
from fedfhe_owner.predict.inference_client import RETRY_POLICY, InferenceClient, InferenceError, channel_target
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc


class Flaky(pb_grpc.InferenceServicer):
    """ListModels refused UNAVAILABLE for the first ``failures`` calls, then answered with this node's name."""

    def __init__(self, name: str, failures: int) -> None:
        self.name, self.failures, self.calls = name, failures, 0
        self.lock = threading.Lock()

    def ListModels(self, request, context):  # noqa: N802 - the RPC's name
        with self.lock:
            self.calls += 1
            refuse = self.calls <= self.failures
        if refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.ListModelsResponse(models=[pb.ModelInfo(model_id=self.name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    init_ca(root)
    issue(root, "inference", server_hosts=["127.0.0.1", "localhost"])
    issue(root, "owner-0", client=True)
    return root


def serve(pki, servicer: Flaky) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_InferenceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([((pki / "inference.key").read_bytes(), (pki / "inference.crt").read_bytes())],
                                        root_certificates=(pki / "ca.crt").read_bytes(),
                                        require_client_auth=True)
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    server.add_secure_port(address, creds)
    server.start()
    return server, address


def endpoint(pki, address: str, *more: str) -> InferenceEndpoint:
    return InferenceEndpoint(address=address, certfile=pki / "owner-0.crt", keyfile=pki / "owner-0.key",
                             ca_certfile=pki / "ca.crt", server_name="localhost" if more else "",
                             more_addresses=list(more))


def test_a_node_refusing_unavailable_costs_a_retry_not_an_error(pki):
    node = Flaky("a", failures=2)
    server, address = serve(pki, node)
    try:
        with InferenceClient(endpoint(pki, address)) as client:
            assert [m.model_id for m in client.list_models()] == ["a"]
        assert node.calls == 3
        node.calls, node.failures = 0, 99  # more refusals than attempts: the owner gets the node's reason
        with InferenceClient(endpoint(pki, address)) as client, pytest.raises(InferenceError) as info:
            client.list_models()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and "restarting" in str(info.value)
        assert node.calls == RETRY_POLICY["maxAttempts"]  # bounded
    finally:
        server.stop(0)


def test_calls_spread_over_several_nodes_and_one_down_is_skipped(pki):
    nodes = [Flaky("a", 0), Flaky("b", 0)]
    servers = [serve(pki, n) for n in nodes]
    down = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    ep = endpoint(pki, servers[0][1], servers[1][1], down)
    assert channel_target(ep, ep.addresses) == f"ipv4:{servers[0][1]},{servers[1][1]},{down}"
    try:
        with InferenceClient(ep) as client:
            answered = {client.list_models()[0].model_id for _ in range(12)}
        assert answered == {"a", "b"}  # round_robin, and the dead address costs retries, not errors
    finally:
        for server, _ in servers:
            server.stop(0)


def test_several_nodes_need_a_server_name_and_ip_addresses(pki):
    with pytest.raises(ConfigError, match="set inference.server_name too"):
        InferenceEndpoint(address="127.0.0.1:1", certfile=pki / "owner-0.crt", keyfile=pki / "owner-0.key",
                          ca_certfile=pki / "ca.crt", more_addresses=["127.0.0.1:2"])
    with pytest.raises(ConfigError, match="every node is an IP:port"):
        InferenceEndpoint(address="node-a:1", certfile=pki / "owner-0.crt", keyfile=pki / "owner-0.key",
                          ca_certfile=pki / "ca.crt", server_name="inference", more_addresses=["127.0.0.1:2"])
