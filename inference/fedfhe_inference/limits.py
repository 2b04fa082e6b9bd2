"""No stalls: identity, per-owner slots and an idle timeout on every request message, before any RPC runs.

grpcio's sync server hands a call to an RPC thread and then waits, with no
timeout, for its first message (even for unary methods, before any handler
or limit runs). A silent call therefore holds a thread for ever, and a few of
them starve every owner. The Guard interceptor changes that for every method
of every service (Inference, health, reflection):

- each handler is re-registered as request-streaming, so our code runs as soon
  as the call arrives, before a message is read;
- it checks the caller's certificate (identity.py) and takes one of the
  owner's call slots (and stream slots, for streaming methods), refusing with
  RESOURCE_EXHAUSTED at once when the owner already holds its share;
- it reads every request message, the first one included, through a reader
  thread that the RPC thread waits on with ``limits.message_idle_s``; a silent
  stream is ended with DEADLINE_EXCEEDED and a message. The reader thread ends
  with the call (gRPC completes its pending read when the status is sent).

Keepalive and connection idle/age limits (``server_options``) cover the
transport underneath.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .config import Limits
from .display import shown, status_text
from .errors import ServiceError, exhausted, invalid
from .identity import Identity
from .metrics import Metrics
from .refusals import REFUSALS, RefusalBudget

log = logging.getLogger("fedfhe.inference.limits")
READER_THREAD = "fedfhe-request-reader"
_END = object()


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC channel arguments: keepalive pings, and closing idle or old connections."""
    ms = 1000
    return [
        ("grpc.keepalive_time_ms", int(limits.keepalive_s * ms)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_s * ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10 * ms),
        ("grpc.max_connection_idle_ms", int(limits.connection_idle_s * ms)),
        ("grpc.max_connection_age_ms", int(limits.connection_age_s * ms)),
        ("grpc.max_connection_age_grace_ms", int(limits.connection_age_grace_s * ms)),
    ]


class OwnerSlots:
    """Per-owner counts of calls (and of streams) in flight; taken without waiting, or refused."""

    def __init__(self, max_calls: int, max_streams: int) -> None:
        self.max_calls, self.max_streams = max_calls, max_streams
        self._calls: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, owner: str, streaming: bool) -> Callable[[], None]:
        """Reserve a slot; returns an idempotent release. RESOURCE_EXHAUSTED when the owner is at its limit."""
        with self._lock:
            calls, streams = self._calls.get(owner, 0), self._streams.get(owner, 0)
            if calls >= self.max_calls:
                raise exhausted(f"owner {owner} already has {calls} calls in progress on this node (limit "
                                f"{self.max_calls}, limits.max_calls_per_owner); wait for one to finish")
            if streaming and streams >= self.max_streams:
                raise exhausted(f"owner {owner} already has {streams} streams open on this node (limit "
                                f"{self.max_streams}, limits.max_streams_per_owner); wait for one to finish")
            self._calls[owner] = calls + 1
            if streaming:
                self._streams[owner] = streams + 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._calls[owner] -= 1
                if not self._calls[owner]:
                    del self._calls[owner]
                if streaming:
                    self._streams[owner] -= 1
                    if not self._streams[owner]:
                        del self._streams[owner]

        return release

    def in_use(self, owner: str) -> tuple[int, int]:
        with self._lock:
            return self._calls.get(owner, 0), self._streams.get(owner, 0)


class ReaderPool:
    """Daemon reader threads kept between calls: a call's first message no longer waits for a thread to start.

    Starting a thread per call (clone, then the caller waiting for it to run) cost the node ~0.4 ms per unary
    call on this 2-core VM, about as much as gRPC's own round trip. A reader runs one call's reads and comes
    back; a new thread starts only when none is idle, so a silent call still never delays another's reads.
    At most ``keep_idle`` idle threads stay; the rest end. ``busy`` counts readers still inside a call.
    """

    def __init__(self, keep_idle: int = 8) -> None:
        self.keep_idle = keep_idle
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._idle = 0
        self.busy = 0

    def run(self, task: Callable[[], None]) -> None:
        with self._lock:
            self.busy += 1
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # that idle thread (or one like it) takes this task
        self._tasks.put(task)
        if spawn:
            threading.Thread(target=self._serve, name=READER_THREAD, daemon=True).start()

    def _serve(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                task()
            finally:
                with self._lock:
                    self.busy -= 1
                    stay = self._idle < self.keep_idle
                    if stay:
                        self._idle += 1
                    self._changed.notify_all()
            if not stay:
                return

    @property
    def idle(self) -> int:
        with self._lock:
            return self._idle

    def settle(self, timeout: float) -> bool:
        """Wait until no reader is inside a call (tests, shutdown checks); False after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.busy == 0, timeout)


class IdleTimeout(ServiceError):
    def __init__(self, idle_s: float, what: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"{what}: no message from the client for {idle_s:g}s (limits.message_idle_s); "
                         "the node closed the stream")


class IdleRequests:
    """A request iterator whose every ``next()`` waits at most ``idle_s`` for the client.

    One reader (a ReaderPool thread, or a thread of its own) per call pulls from gRPC's iterator when asked, at most
    ``ahead`` messages before the RPC thread wants them, so the RPC thread can give
    up on a silent client. ``ahead=1`` for streams: the next key chunk is read and
    parsed while the RPC thread stores the last one (not one after the other).
    ``close()`` lets the reader go; a reader still blocked in gRPC ends when the call ends.
    """

    def __init__(self, source: Iterator[Any], idle_s: float, what: str, ahead: int = 0,
                 readers: ReaderPool | None = None) -> None:
        self._source, self.idle_s, self.what, self._readers = source, idle_s, what, readers
        self._wanted = threading.Semaphore(ahead)
        self._results: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self._closed = False
        self._finished = False
        self._started = False

    def __iter__(self) -> IdleRequests:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        if not self._started:
            self._started = True
            if self._readers is not None:
                self._readers.run(self._read)
            else:
                threading.Thread(target=self._read, name=READER_THREAD, daemon=True).start()
        self._wanted.release()
        try:
            item, error = self._results.get(timeout=self.idle_s)
        except queue.Empty:
            self._finished = True
            raise IdleTimeout(self.idle_s, self.what) from None
        if error is not None:
            self._finished = True
            raise error
        if item is _END:
            self._finished = True
            raise StopIteration
        return item

    def _read(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed:
                return
            try:
                item: Any = next(self._source)
                error = None
            except StopIteration:
                item, error = _END, None
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread (e.g. the client cancelled)
                item, error = None, exc
            self._results.put((item, error))
            if item is _END or error is not None:
                return

    def close(self) -> None:
        self._closed = True
        self._finished = True
        self._wanted.release()


def _method_name(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


class Guard(grpc.ServerInterceptor):
    """Identity, per-owner slots and idle timeouts around every method of the server (see module doc)."""

    def __init__(self, identity: Identity, limits: Limits, metrics: Metrics | None = None) -> None:
        self.identity = identity
        self.slots = OwnerSlots(limits.max_calls_per_owner, limits.max_streams_per_owner)
        self.refusals = RefusalBudget(limits.refusals_per_owner_per_s, limits.refusal_burst)
        self.idle_s = limits.message_idle_s
        self.metrics = metrics
        self.readers = ReaderPool()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        return self._guarded(details.method, handler)

    def _admit(self, method: str, context: grpc.ServicerContext, streaming: bool,
               who: dict[str, str]) -> Callable[[], None]:
        """Identity first, then the owner's refusal budget, then a slot; refusals abort before any message is read."""
        try:
            owner = who["owner"] = self.identity.owner(context)
            wait = self.refusals.wait_s(owner)
            if wait > 0:  # no log line, no slot: the cheapest refusal there is
                who.pop("owner")  # not spent again: the budget refills while the flood goes on
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, status_text(
                    f"owner {owner}: too many refused calls (limits.refusal_burst, refusals_per_owner_per_s); "
                    f"calls are refused for {wait:.1f}s more"))
            try:
                return self.slots.take(owner, streaming)
            except ServiceError:
                who["at-limit"] = owner  # the caller's own concurrency: a refusal it spends a token on
                raise
        except ServiceError as exc:
            log.warning("refused %s from %s: %s %s", _method_name(method), shown(context.peer(), 80),
                        exc.code.name, shown(exc.message, 300))
            context.abort(exc.code, status_text(exc.message))
            raise  # context.abort raised already; this line is never reached

    def _guarded(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        streaming = handler.request_streaming or handler.response_streaming
        what = _method_name(method)
        behavior = handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary

        def call(request_iterator: Iterator[Any], context: grpc.ServicerContext, *extra: Any) -> Any:
            started = time.perf_counter()
            who: dict[str, str] = {}

            def observed(otherwise: grpc.StatusCode = grpc.StatusCode.OK) -> None:  # once per call, refusals too
                code = _final_code(context, otherwise)
                if self.metrics is not None:
                    self.metrics.observe_call(method, code, time.perf_counter() - started)
                if "owner" in who and (code in REFUSALS or "at-limit" in who) and self.refusals.spend(who["owner"]):
                    log.warning("owner %s spent its refused-call burst; its calls are refused at once until its "
                                "budget refills (limits.refusals_per_owner_per_s)", shown(who["owner"], 80))

            try:
                return admitted(request_iterator, context, observed, who, *extra)
            except BaseException:
                observed(grpc.StatusCode.UNKNOWN)  # what gRPC sends for an exception without abort()
                raise

        def admitted(request_iterator: Iterator[Any], context: grpc.ServicerContext, observed: Callable[..., None],
                     who: dict[str, str], *extra: Any) -> Any:
            release = self._admit(method, context, streaming, who)
            requests = IdleRequests(request_iterator, self.idle_s, what, ahead=1 if handler.request_streaming else 0,
                                    readers=self.readers)
            try:
                if handler.request_streaming:
                    argument: Any = requests
                else:
                    argument = next(requests, _END)
                    requests.close()
                    if argument is _END:
                        raise invalid(f"{what} requires exactly one request message")
                result = behavior(argument, context, *extra)
            except ServiceError as exc:
                release()
                requests.close()
                context.abort(exc.code, status_text(exc.message))
            except BaseException:
                release()
                requests.close()
                raise
            if not handler.response_streaming:
                release()
                requests.close()
                observed()
                return result
            if extra:  # non-blocking streaming (health Watch, given send_response_callback): lives on after we return
                if not context.add_callback(lambda: (release(), requests.close(), observed())):
                    release()
                    requests.close()
                    observed()
                return result
            return _released_after(result, context, release, requests.close, observed)

        if handler.response_streaming:
            if getattr(behavior, "experimental_non_blocking", False):
                call.experimental_non_blocking = True  # type: ignore[attr-defined]
            return grpc.stream_stream_rpc_method_handler(
                call, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _final_code(context: grpc.ServicerContext, otherwise: grpc.StatusCode) -> grpc.StatusCode:
    """The status a call ends with: the one it aborted with, CANCELLED if the client left, else ``otherwise``."""
    code = context.code()  # set by context.abort()/set_code()
    if isinstance(code, grpc.StatusCode):
        return code
    if not context.is_active():
        return grpc.StatusCode.CANCELLED
    return otherwise


def _released_after(responses: Iterator[Any], context: grpc.ServicerContext,
                    *finalizers: Callable[[], None]) -> Iterator[Any]:
    """Yield ``responses``; run ``finalizers`` when the stream ends, fails or is dropped."""
    try:
        yield from responses
    except ServiceError as exc:  # e.g. an idle timeout while a bidirectional handler waited for a message
        context.abort(exc.code, status_text(exc.message))
    finally:
        for fn in finalizers:
            fn()
