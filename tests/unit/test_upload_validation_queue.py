"""Key checks run one at a time in owners' turns, and an upload waits for its turn only until its deadline."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest

from fedfhe_inference.errors import ServiceError
from fedfhe_inference.keystore import KeyStore


def _store(root) -> KeyStore:
    return KeyStore(root, max_keys_per_owner=8, max_key_bytes=1 << 20, max_chunk_bytes=1 << 20, cache_bytes=0)


def _commit(store: KeyStore, owner: str, validate, deadline: float | None = None, data: bytes = b"keys") -> str:
    with store.upload(owner, "m", "v1", len(data), hashlib.sha256(data).hexdigest()) as up:
        up.write(data)
        return up.commit(validate, deadline).key_id


def _wait(condition, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_an_upload_waiting_past_its_deadline_is_refused_and_nothing_is_stored(tmp_path):
    store = _store(tmp_path)
    running, release = threading.Event(), threading.Event()

    def slow(path, key_id):  # owner-a's check: a tree's keys take a while in Concrete
        running.set()
        release.wait(30)

    first = threading.Thread(target=_commit, args=(store, "owner-a", slow))
    first.start()
    try:
        assert running.wait(10)
        with pytest.raises(ServiceError) as info:
            _commit(store, "owner-b", lambda p, k: None, deadline=time.monotonic() + 0.3)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "upload again" in info.value.message
        assert store.owned_by("owner-b") == [] and not list(tmp_path.glob(".upload-*"))[1:]
    finally:
        release.set()
        first.join(30)
    assert len(store.owned_by("owner-a")) == 1


def test_one_owners_queue_of_uploads_delays_another_by_one_check(tmp_path):
    store = _store(tmp_path)
    order: list[str] = []
    release = threading.Event()

    def check(owner: str):
        def run(path, key_id):
            order.append(owner)
            if len(order) == 1:
                release.wait(30)  # the first check holds the slot while the others queue
        return run

    threads = [threading.Thread(target=_commit, args=(store, "owner-a", check("owner-a")))]
    threads[0].start()
    _wait(lambda: order == ["owner-a"])
    for _ in range(3):
        threads.append(threading.Thread(target=_commit, args=(store, "owner-a", check("owner-a"))))
        threads[-1].start()
    _wait(lambda: store.validation_gate.waiting("owner-a") == 3)
    threads.append(threading.Thread(target=_commit, args=(store, "owner-b", check("owner-b"))))
    threads[-1].start()
    _wait(lambda: store.validation_gate.waiting("owner-b") == 1)
    release.set()
    for t in threads:
        t.join(30)
    assert order.index("owner-b") == 1  # right after the check that was running, not after owner-a's queue
    assert len(order) == 5
