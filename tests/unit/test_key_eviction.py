"""Keys uploaded under a revoked certificate, and keys nobody used for too long, leave the node's disk."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from fedfhe_inference.keystore import KeyStore


def _store(root: Path) -> KeyStore:
    return KeyStore(root, max_keys_per_owner=4, max_key_bytes=1 << 20, max_chunk_bytes=1 << 20, cache_bytes=0)


def _upload(store: KeyStore, owner: str, serial: str, data: bytes = b"evaluation keys") -> str:
    with store.upload(owner, "m", "v1", len(data), hashlib.sha256(data).hexdigest(), serial) as up:
        up.write(data)
        return up.commit(lambda path, key_id: None).key_id


def test_revoking_a_certificate_deletes_the_keys_it_uploaded(tmp_path):
    store = _store(tmp_path)
    old = _upload(store, "bob", "1a2b")
    renewed = _upload(store, "bob", "3c4d")  # bob's re-issued certificate
    alice = _upload(store, "alice", "5e")
    gone = store.evict(frozenset({0x1A2B}), idle_s=0)
    assert [(r.key_id, "revoked" in why) for r, why in gone] == [(old, True)]
    assert sorted(p.name for p in tmp_path.glob("*.evk")) == sorted(f"{k}.evk" for k in (renewed, alice))
    assert _store(tmp_path).owned_by("bob")[0].key_id == renewed  # and a restart agrees


def test_idle_keys_are_evicted_and_a_use_keeps_them(tmp_path, monkeypatch):
    store = _store(tmp_path)
    idle, used = _upload(store, "alice", "1"), _upload(store, "alice", "1")
    day, start = 86400, time.time()
    assert store.evict(frozenset(), idle_s=day, now=start + day / 2) == []
    monkeypatch.setattr(time, "time", lambda: start + 1.5 * day)  # Predict uses one of them a day and a half later
    store.touch(store.get(used, "alice"))
    monkeypatch.undo()
    gone = store.evict(frozenset(), idle_s=day, now=start + 2 * day)
    assert [(r.key_id, "unused" in why) for r, why in gone] == [(idle, True)]
    assert store.evict(frozenset(), idle_s=0, now=start + 10**9) == []  # 0: never


def test_last_use_survives_a_restart(tmp_path):
    store = _store(tmp_path)
    key = _upload(store, "carol", "2")
    old = time.time() - 10 * 86400
    os.utime(tmp_path / f"{key}.evk", (old, old))  # what a node that last used them 10 days ago left
    restarted = _store(tmp_path)
    assert [r.key_id for r, _ in restarted.evict(frozenset(), idle_s=7 * 86400)] == [key]


def test_keys_of_before_this_change_have_no_serial_and_stay(tmp_path):
    store = _store(tmp_path)
    key = _upload(store, "dave", "")
    assert store.evict(frozenset({0}), idle_s=0) == []
    assert store.get(key, "dave").serial == ""
