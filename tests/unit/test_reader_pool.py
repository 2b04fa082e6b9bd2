"""The Guard's pooled readers: reused between calls, never shared by two calls at once, released after each."""

from __future__ import annotations

import threading

import pytest

from fedfhe_inference.limits import READER_THREAD, IdleRequests, IdleTimeout, ReaderPool


def _reader_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == READER_THREAD}


def test_sequential_calls_reuse_one_reader_thread():
    pool = ReaderPool()
    before = _reader_threads()
    for i in range(20):
        requests = IdleRequests(iter([i]), 5.0, "Predict", readers=pool)
        assert next(requests) == i
        requests.close()
        assert pool.settle(10), "a reader stayed busy after its call was closed"
    assert len(_reader_threads() - before) == 1
    assert pool.idle == 1


def test_a_silent_call_does_not_hold_up_another_calls_reads():
    pool = ReaderPool()
    release = threading.Event()

    def silent():
        release.wait(30)
        yield 0

    stuck = IdleRequests(silent(), 0.3, "Predict", readers=pool)
    try:
        with pytest.raises(IdleTimeout):
            next(stuck)
        assert pool.busy == 1  # its reader still waits on the client
        other = IdleRequests(iter(["served"]), 5.0, "Predict", readers=pool)
        assert next(other) == "served"  # another reader thread took it at once
        other.close()
    finally:
        release.set()
        stuck.close()
    assert pool.settle(10)


def test_idle_threads_are_capped():
    pool = ReaderPool(keep_idle=2)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        gate.wait(30)

    for _ in range(5):
        pool.run(hold)
    for _ in range(5):
        assert started.acquire(timeout=10)  # five calls at once: five threads
    assert pool.busy == 5
    gate.set()
    assert pool.settle(10)
    assert pool.idle == 2  # the other three threads ended
