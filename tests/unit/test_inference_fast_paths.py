"""Issue 14's fast paths keep their limits: stream read-ahead stays bounded, workers get their tunables."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from fedfhe_inference.limits import IdleRequests, IdleTimeout
from fedfhe_inference.sandbox import MALLOC_TUNABLES, worker_env


class _Source:
    """An iterator that counts how many messages were pulled from it, and signals each pull."""

    def __init__(self, items: list[int], block_after: int | None = None) -> None:
        self.items, self.block_after = items, block_after
        self.pulled = 0
        self.changed = threading.Condition()
        self.release = threading.Event()

    def __iter__(self) -> Iterator[int]:
        for item in self.items:
            if self.block_after is not None and self.pulled >= self.block_after:
                self.release.wait(30)  # a silent client: nothing arrives until the test lets it
            with self.changed:
                self.pulled += 1
                self.changed.notify_all()
            yield item

    def wait_pulled(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.pulled >= n, timeout)


def test_streams_read_one_message_ahead_and_no_more():
    source = _Source(list(range(5)))
    requests = IdleRequests(iter(source), 5.0, "UploadKeys", ahead=1)
    assert next(requests) == 0
    assert source.wait_pulled(2, 10), "the next message was not read while the first was handled"
    assert not source.wait_pulled(3, 0.3), "read more than one message ahead"
    assert list(requests) == [1, 2, 3, 4]
    requests.close()


def test_unary_calls_read_nothing_ahead():
    source = _Source([7, 8])
    requests = IdleRequests(iter(source), 5.0, "Predict")
    assert next(requests) == 7
    assert not source.wait_pulled(2, 0.3), "a unary call read past its one message"
    requests.close()


def test_read_ahead_keeps_the_idle_timeout():
    source = _Source([1, 2, 3], block_after=1)
    requests = IdleRequests(iter(source), 0.3, "UploadKeys", ahead=1)
    assert next(requests) == 1
    with pytest.raises(IdleTimeout, match="no message from the client"):
        next(requests)
    source.release.set()
    requests.close()


def test_workers_keep_their_heap_and_let_openmp_sleep(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    env = worker_env("/tmp/w")
    assert env["GLIBC_TUNABLES"] == MALLOC_TUNABLES and "glibc.malloc.mmap_max=0" in MALLOC_TUNABLES
    assert env["KMP_BLOCKTIME"] == "0"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setenv("KMP_BLOCKTIME", "50")
    env = worker_env("/tmp/w")  # the operator's settings stay
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{MALLOC_TUNABLES}"
    assert env["KMP_BLOCKTIME"] == "50"
