"""Run FHEModelServer on a batch of ciphertexts, one row per job, on a pool sized to the cores.

Concrete's runtime releases the GIL while it evaluates a circuit (measured: a
Python thread keeps ~90% of its speed during a run), so a thread pool uses
every core without a process pool, and nothing is pickled.
"""

from __future__ import annotations

import concurrent.futures as cf
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from .errors import ServiceError, invalid


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


_MAX_SEGMENTS = 512  # Cap'n Proto's own limit per message


def framing_error(data: bytes) -> str | None:
    """Why ``data`` is not exactly one Cap'n Proto message (Concrete's wire format for values and keys), or None.

    Concrete's parser trusts the segment table: bytes announcing more than they hold make it fail once
    per 8 KiB it cannot read, symbolizing a stack trace in a subprocess each time, with the GIL held; a
    1.8 kB request announcing gigabytes froze the whole node for minutes (found by
    tests/reliability/test_inference_fuzz.py). Checking the table first costs microseconds.
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


def deserialize_rows(ciphertexts: list[bytes]) -> list[Any]:
    """Each row must be a Concrete ciphertext; the first that is not is named by its index."""
    from concrete import fhe

    values = []
    for i, ct in enumerate(ciphertexts):
        reason = framing_error(ct)
        if reason:
            raise invalid(f"row {i}: not a Concrete ciphertext ({reason})")
        try:
            values.append(fhe.Value.deserialize(ct))
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is the caller's
            raise invalid(f"row {i}: not a Concrete ciphertext ({_first_line(exc)})") from None
    return values


class FheRunner:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhe")

    def run_batch(
        self, server: Any, values: list[Any], keys: Any, timeout: float, is_active: Callable[[], bool],
        label: str,
    ) -> tuple[list[bytes], float]:
        """Encrypted results in row order and the wall time; stops early on the first bad row or timeout."""
        stop = threading.Event()

        def one(i: int, value: Any) -> bytes:
            if stop.is_set() or not is_active():
                raise cf.CancelledError()
            try:
                result = server.run(value, keys)
            except Exception as exc:  # noqa: BLE001 - Concrete refuses foreign ciphertexts with RuntimeError
                raise invalid(
                    f"row {i}: ciphertext does not fit {label} (encrypted for another model version, "
                    f"or with other keys?): {_first_line(exc)}"
                ) from None
            return result.serialize()

        started = time.perf_counter()
        futures = [self.pool.submit(one, i, v) for i, v in enumerate(values)]
        try:
            done, pending = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_EXCEPTION)
            if not is_active():
                raise ServiceError(grpc.StatusCode.CANCELLED, "the client cancelled the request")
            errors = [fut.exception() for fut in futures if fut in done]  # row order: the first bad row is reported
            for exc in errors:
                if isinstance(exc, ServiceError):
                    raise exc
            for exc in errors:
                if exc is not None and not isinstance(exc, cf.CancelledError):
                    raise ServiceError(grpc.StatusCode.INTERNAL, f"FHE execution failed: {_first_line(exc)}")
            if pending:
                raise ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{len(pending)} of {len(values)} rows were not evaluated within {timeout:.1f}s; "
                    "send smaller batches or allow a longer deadline",
                )
            return [f.result() for f in futures], time.perf_counter() - started
        finally:
            stop.set()
            for fut in futures:
                fut.cancel()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
