"""Run FHEModelServer on a batch of ciphertexts, one row per job, on a pool sized to the cores.

Every row is first checked against the circuit (fedfhe_common.contracts.fhe_wire) in the node's process; Concrete
then parses and evaluates it in a sandboxed worker process (sandbox.py), so bytes that crash Concrete
cost one worker, not the node. The threads here only wait on the workers' pipes. ``sandbox: false``
keeps the evaluation in-process (Concrete releases the GIL while it runs), as the benchmark's reference.
"""

from __future__ import annotations

import concurrent.futures as cf
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from fedfhe_common.contracts.fhe_wire import CircuitSpec, WireError

from .errors import ServiceError, invalid
from .fair import FairGate, SlotTimeout
from .sandbox import SandboxPool, WorkerError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


_MAX_SEGMENTS = 512  # Cap'n Proto's own limit per message


def framing_error(data: bytes) -> str | None:
    """Why ``data`` is not exactly one Cap'n Proto message (Concrete's wire format for values and keys), or None.

    Concrete's parser trusts the segment table: bytes announcing more than they hold make it fail once
    per 8 KiB it cannot read, symbolizing a stack trace in a subprocess each time, with the GIL held; a
    1.8 kB request announcing gigabytes froze the whole node for minutes (found by
    tests/loopback/test_inference_fuzz.py). Checking the table first costs microseconds.
    """
    if len(data) < 8:
        return f"{len(data)} bytes, shorter than a message header"
    count = int.from_bytes(data[:4], "little") + 1
    if count > _MAX_SEGMENTS:
        return f"announces {count} segments"
    header = 4 * (count + 1)
    header += header % 8
    if len(data) < header:
        return "truncated segment table"
    expected = header + 8 * sum(struct.unpack_from(f"<{count}I", data, 4))
    if expected != len(data):
        return f"announces {expected} bytes but holds {len(data)}"
    return None


_SPECS: dict[str, CircuitSpec] = {}
_SPECS_LOCK = threading.Lock()


def circuit_spec(bundle: Any) -> CircuitSpec:
    """The bundle's circuit as client.specs.json describes it (cached per client.zip digest)."""
    with _SPECS_LOCK:
        spec = _SPECS.get(bundle.client_zip_sha256)
    if spec is None:
        try:
            spec = CircuitSpec.from_client_zip(bundle.client_zip)
        except WireError as exc:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{bundle.model_id} version {bundle.version}: unusable client specs: {exc}") from None
        with _SPECS_LOCK:
            _SPECS[bundle.client_zip_sha256] = spec
    return spec


def check_rows(spec: CircuitSpec, ciphertexts: list[bytes]) -> None:
    """Each row must be exactly a ciphertext of the circuit's input; the first that is not is named by its index."""
    for i, ct in enumerate(ciphertexts):
        try:
            spec.check_input(ct)
        except WireError as exc:
            raise invalid(f"row {i}: not a ciphertext of this model's input: {exc}") from None


class KeyFault(ServiceError):
    """Stored keys that Concrete could not load in a worker (crash, overrun or refusal): to be quarantined."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


class _InProcess:
    """Today's evaluation, in the node's own process (``sandbox: false``; the benchmark's reference)."""

    def __init__(self, server: Any, keys: Any) -> None:
        self.server, self.keys = server, keys

    def run(self, ct: bytes, _: Any) -> Any:
        from concrete import fhe  # lazy: concrete-ml takes seconds to import

        return self.server.run(fhe.Value.deserialize(ct), self.keys)


class _Sandboxed:
    """One batch's evaluation in the worker pool: raw bytes in, raw bytes out."""

    def __init__(self, pool: SandboxPool, directory: str, key_id: str, path: str, job_s: float) -> None:
        self.pool, self.job_s = pool, job_s
        self.ids = [directory.encode(), key_id.encode(), path.encode()]
        self.key_id = key_id

    def run(self, ct: bytes, _: Any) -> bytes:
        try:
            return self.pool.call([b"run", *self.ids, ct], self.job_s, preload=[b"keys", *self.ids])[0]
        except WorkerError as exc:
            if exc.phase == "keys":
                raise KeyFault(f"evaluation keys {self.key_id} could not be loaded by an FHE worker "
                               f"({exc.message}); they are quarantined: delete them and upload new keys") from None
            if exc.kind in ("refused", "mismatch"):
                raise RuntimeError(exc.message) from None
            raise ServiceError(grpc.StatusCode.INTERNAL, f"FHE evaluation failed: {exc.message}") from None


class FheRunner:
    """Rows of a batch in parallel; Concrete itself runs in sandboxed worker processes when ``sandbox`` is given."""

    def __init__(self, workers: int, sandbox: SandboxPool | None = None, job_s: float = 600.0) -> None:
        self.workers = workers
        self.gate = FairGate(workers)  # the workers' slots, handed to owners in turn
        # Threads only wait (at the gate, on a worker's pipe): each call gets up to ``workers`` of them.
        self.pool = cf.ThreadPoolExecutor(max_workers=max(64, 4 * workers), thread_name_prefix="fhe")
        self.sandbox, self.job_s = sandbox, job_s

    def validate_keys(self, bundle: Any, path: Path, key_id: str) -> Any:
        """Uploaded keys (the file at ``path``): exactly what the circuit needs, and loadable by Concrete; refused
        otherwise. Returns the deserialized keys when they live in this process (``sandbox: false``), else None.

        Sandboxed, the node does not read the file: the worker checks it against the circuit (fhe_wire) before
        Concrete parses it, once, and keeps the parse cached under ``key_id``, the id the keys are about to get,
        so the owner's first Predict on that worker is warm.
        """
        if self.sandbox is None:
            from concrete import fhe  # lazy: concrete-ml takes seconds to import

            data = path.read_bytes()
            try:
                circuit_spec(bundle).check_evaluation_keys(data)
            except WireError as exc:
                raise invalid(f"the uploaded bytes are not this model's evaluation keys: {exc}") from None
            try:
                return fhe.EvaluationKeys.deserialize(data)
            except Exception as exc:  # noqa: BLE001 - Concrete's parser rejects bad bytes in several ways
                raise invalid(f"the uploaded bytes are not Concrete evaluation keys: {_first_line(exc)}") from None
        try:
            self.sandbox.call([b"keys", str(bundle.directory).encode(), key_id.encode(), str(path).encode()],
                              self.job_s)
        except WorkerError as exc:
            if exc.kind == "mismatch":
                raise invalid(f"the uploaded bytes are not this model's evaluation keys: {exc.message}") from None
            raise invalid(f"the uploaded evaluation keys were refused by an FHE worker ({exc.message}); "
                          "nothing was stored") from None
        return None

    def evaluator(self, bundle: Any, key_id: str, path: Path, keys: Callable[[], Any]) -> Any:
        """What run_batch calls per row: the worker pool, or the in-process server with ``keys()``."""
        if self.sandbox is None:
            return _InProcess(bundle.server, keys())
        return _Sandboxed(self.sandbox, str(bundle.directory), key_id, str(path), self.job_s)

    def forget(self, key_id: str) -> None:
        if self.sandbox is not None:
            self.sandbox.broadcast_forget(key_id)

    def run_batch(
        self, server: Any, values: list[Any], keys: Any, timeout: float, is_active: Callable[[], bool],
        label: str, owner: str = "-",
    ) -> tuple[list[bytes], float]:
        """Encrypted results in row order and the wall time; stops early on the first bad row or timeout.

        Every row takes a worker slot from the fair gate in ``owner``'s turn (``fair.FairGate``), and a call's
        rows are run by at most ``workers`` threads of its own, so a large batch cannot queue ahead of another
        owner's rows anywhere but at the gate, where owners alternate.
        """
        stop = threading.Event()
        started = time.perf_counter()
        deadline = started + timeout

        def one(i: int, value: Any) -> bytes:
            if stop.is_set() or not is_active():
                raise cf.CancelledError()
            try:
                with self.gate.slot(owner, max(0.0, deadline - time.perf_counter())):
                    if stop.is_set():
                        raise cf.CancelledError()
                    result = server.run(value, keys)
            except (ServiceError, cf.CancelledError):
                raise
            except SlotTimeout:
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"row {i} found no FHE worker within {timeout:.1f}s (the node is busy); "
                                   "send smaller batches or allow a longer deadline") from None
            except Exception as exc:  # noqa: BLE001 - Concrete refuses foreign ciphertexts with RuntimeError
                raise invalid(
                    f"row {i}: ciphertext does not fit {label} (encrypted for another model version, "
                    f"or with other keys?): {_first_line(exc)}"
                ) from None
            return result if isinstance(result, bytes) else result.serialize()

        if len(values) == 1:  # one row: on this thread, no hand-off to the pool and back (two wake-ups per call)
            result = one(0, values[0])
            if not is_active():
                raise ServiceError(grpc.StatusCode.CANCELLED, "the client cancelled the request")
            return [result], time.perf_counter() - started
        results: list[bytes | None] = [None] * len(values)
        rows = iter(range(len(values)))
        rows_lock = threading.Lock()
        refused: dict[int, ServiceError] = {}

        def drain() -> None:
            while not stop.is_set():
                with rows_lock:
                    i = next(rows, None)
                if i is None:
                    return
                try:
                    results[i] = one(i, values[i])
                except ServiceError as exc:
                    refused[i] = exc
                    raise

        futures = [self.pool.submit(drain) for _ in range(min(self.workers, len(values)))]
        try:
            done, pending = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_EXCEPTION)
            if refused:
                # Rows start in order, so every row before the refused one has started: let those in flight
                # end (no new row starts) and report the lowest bad row, whichever worker finished first.
                stop.set()
                done, pending = cf.wait(futures, timeout=max(0.0, deadline - time.perf_counter()))
            if not is_active():
                raise ServiceError(grpc.StatusCode.CANCELLED, "the client cancelled the request")
            if refused:
                raise refused[min(refused)]
            errors = [fut.exception() for fut in futures if fut in done]
            for exc in errors:
                if isinstance(exc, ServiceError):
                    raise exc
            for exc in errors:
                if exc is not None and not isinstance(exc, cf.CancelledError):
                    raise ServiceError(grpc.StatusCode.INTERNAL, f"FHE execution failed: {_first_line(exc)}")
            missing = sum(r is None for r in results)
            if pending or missing:
                raise ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{missing} of {len(values)} rows were not evaluated within {timeout:.1f}s; "
                    "send smaller batches or allow a longer deadline",
                )
            return [r for r in results if r is not None], time.perf_counter() - started
        finally:
            stop.set()
            for fut in futures:
                fut.cancel()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.sandbox is not None:
            self.sandbox.shutdown()
