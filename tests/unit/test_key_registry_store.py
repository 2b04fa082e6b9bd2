"""The key store with a shared key registry (an in-memory stand-in for key_registry.KeyRegistry).

Two stores on their own directories share one registry, as two inference nodes share PostgreSQL:
what one uploads the other loads (checked like an upload), a delete through either ends the key on
both, quotas count the registry's keys, a registry that is away is UNAVAILABLE (no fallback), and
the TLS settings of the connection cannot be weakened by a DSN.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from fedfhe_inference.config import KeyRegistryConfig
from fedfhe_inference.errors import RegistryError, ServiceError
from fedfhe_inference.keystore import KeyRecord, KeyStore


class FakeRegistry:
    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.data: dict[str, bytes] = {}
        self.down = False

    def _up(self) -> None:
        if self.down:
            raise RegistryError("the shared key registry failed: connection refused")

    def put(self, record: KeyRecord, path: Path) -> None:
        self._up()
        self.records[record.key_id] = replace(record, served=record.versions)
        self.data[record.key_id] = path.read_bytes()

    def get(self, key_id: str) -> KeyRecord | None:
        self._up()
        return self.records.get(key_id)

    def fetch(self, record: KeyRecord, out: IO[bytes]) -> bool:
        self._up()
        data = self.data.get(record.key_id)
        if data is None:
            return False
        out.write(data)
        return hashlib.sha256(data).hexdigest() == record.sha256 and len(data) == record.size

    def delete(self, key_id: str) -> bool:
        self._up()
        self.data.pop(key_id, None)
        return self.records.pop(key_id, None) is not None

    def owned(self, owner: str) -> dict[str, int]:
        self._up()
        return {k: r.size for k, r in self.records.items() if r.owner == owner}

    def attach(self, key_id: str, version: str, serial: str) -> KeyRecord | None:
        r = self.records.get(key_id)
        if r is None:
            return None
        r = replace(r, served=r.versions if version in r.versions else (*r.versions, version))
        self.records[key_id] = r
        return r

    def detach(self, key_id: str, version: str) -> tuple[KeyRecord | None, bool]:
        r = self.records.get(key_id)
        if r is None:
            return None, False
        left = tuple(v for v in r.versions if v != version)
        if not left:
            self.delete(key_id)
            return r, True
        self.records[key_id] = replace(r, served=left)
        return self.records[key_id], False


def _store(root: Path, registry: Any, **kw: Any) -> KeyStore:
    events: list[str] = []
    store = KeyStore(root, max_keys_per_owner=kw.pop("max_keys", 4), max_key_bytes=1 << 20,
                     max_chunk_bytes=1 << 20, cache_bytes=0, registry=registry, **kw)
    store.registry_event = events.append
    store.events = events  # type: ignore[attr-defined]
    return store


def _upload(store: KeyStore, owner: str, data: bytes = b"evaluation keys") -> str:
    with store.upload(owner, "m", "1", len(data), hashlib.sha256(data).hexdigest(), "0a") as up:
        up.write(data)
        return up.commit(lambda path, key_id: None).key_id


def _code(fn: Any) -> grpc.StatusCode:
    with pytest.raises(ServiceError) as info:
        fn()
    return info.value.code


def test_uploaded_through_one_loaded_checked_and_served_through_the_other(tmp_path):
    reg = FakeRegistry()
    a, b = _store(tmp_path / "a", reg), _store(tmp_path / "b", reg)
    key_id = _upload(a, "alice")
    assert key_id in reg.records and reg.data[key_id] == b"evaluation keys"
    checked: list[tuple[str, bytes]] = []

    def check(record: KeyRecord, path: Path, kid: str) -> None:
        checked.append((record.owner, path.read_bytes()))

    assert _code(lambda: b.current(key_id, "bob", check)) == grpc.StatusCode.PERMISSION_DENIED
    record = b.current(key_id, "alice", check)
    assert record.owner == "alice" and checked == [("alice", b"evaluation keys")]
    assert b.key_path(record).read_bytes() == b"evaluation keys" and b.events == ["miss", "load"]
    b.current(key_id, "alice", check)
    assert b.events == ["miss", "load", "hit"] and len(checked) == 1  # served from the checked copy
    assert not list((tmp_path / "b").glob(".upload-*"))


def test_a_copy_failing_the_check_or_its_hash_is_not_kept(tmp_path):
    reg = FakeRegistry()
    a, b = _store(tmp_path / "a", reg), _store(tmp_path / "b", reg)
    key_id = _upload(a, "alice")

    def refuse(record: KeyRecord, path: Path, kid: str) -> None:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "not keys of this circuit")

    assert _code(lambda: b.current(key_id, "alice", refuse)) == grpc.StatusCode.INVALID_ARGUMENT
    reg.data[key_id] = b"evaluation keyz"  # damaged in the registry
    assert _code(lambda: b.current(key_id, "alice", lambda *_: None)) == grpc.StatusCode.DATA_LOSS
    assert list((tmp_path / "b").iterdir()) == []


def test_a_delete_through_either_node_ends_the_key_on_both(tmp_path):
    reg = FakeRegistry()
    a, b = _store(tmp_path / "a", reg), _store(tmp_path / "b", reg)
    key_id = _upload(a, "alice")
    b.current(key_id, "alice", lambda *_: None)
    assert _code(lambda: b.delete(key_id, "bob")) == grpc.StatusCode.PERMISSION_DENIED
    b.delete(key_id, "alice")
    assert key_id not in reg.records and not (tmp_path / "b" / f"{key_id}.evk").exists()
    assert (tmp_path / "a" / f"{key_id}.evk").exists()  # until A is asked for it
    assert _code(lambda: a.current(key_id, "alice", lambda *_: None)) == grpc.StatusCode.NOT_FOUND
    assert not (tmp_path / "a" / f"{key_id}.evk").exists()


def test_versions_attached_through_one_node_reach_the_other(tmp_path):
    reg = FakeRegistry()
    a, b = _store(tmp_path / "a", reg), _store(tmp_path / "b", reg)
    key_id = _upload(a, "alice")
    b.current(key_id, "alice", lambda *_: None)
    assert a.attach(key_id, "alice", "m", "2").versions == ("1", "2")
    assert b.current(key_id, "alice").versions == ("1", "2")
    record, deleted = b.detach(key_id, "alice", "m", "1")
    assert not deleted and record.versions == ("2",) and reg.records[key_id].versions == ("2",)
    _, deleted = a.detach(key_id, "alice", "m", "2")
    assert deleted and key_id not in reg.records


def test_quota_counts_the_registry_keys_and_a_registry_away_is_unavailable(tmp_path):
    reg = FakeRegistry()
    a, b = _store(tmp_path / "a", reg, max_keys=2), _store(tmp_path / "b", reg, max_keys=2)
    _upload(a, "alice", b"one")
    _upload(a, "alice", b"two")
    assert _code(lambda: _upload(b, "alice", b"three")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    reg.down = True
    assert _code(lambda: _upload(b, "bob", b"four")) == grpc.StatusCode.UNAVAILABLE
    key_id = next(iter(reg.records))
    assert _code(lambda: a.current(key_id, "alice")) == grpc.StatusCode.UNAVAILABLE


def test_an_upload_the_registry_cannot_take_is_not_kept(tmp_path):
    reg = FakeRegistry()
    a = _store(tmp_path / "a", reg)

    def fail(record: KeyRecord, path: Path) -> None:
        raise RegistryError("the shared key registry failed: disk full")

    reg.put = fail  # type: ignore[method-assign]
    assert _code(lambda: _upload(a, "alice")) == grpc.StatusCode.UNAVAILABLE
    assert list((tmp_path / "a").iterdir()) == [] and a.usage() == (0, 0, 0)


def test_without_a_registry_current_is_get(tmp_path):
    store = KeyStore(tmp_path, max_keys_per_owner=4, max_key_bytes=1 << 20, max_chunk_bytes=1 << 20, cache_bytes=0)
    key_id = _upload(store, "alice")
    assert store.current(key_id, "alice") == store.get(key_id, "alice")


def test_a_dsn_cannot_weaken_the_tls_settings(tmp_path):
    from psycopg.conninfo import conninfo_to_dict

    cfg = KeyRegistryConfig(ca_certfile=tmp_path / "ca.crt", certfile=tmp_path / "n.crt", keyfile=tmp_path / "n.key",
                            dsn="host=db.example.org user=fedfhe-registry sslmode=disable sslrootcert=/dev/null")
    got = conninfo_to_dict(cfg.conninfo())
    assert got["sslmode"] == "verify-full" and got["sslrootcert"] == str(tmp_path / "ca.crt")
    assert got["host"] == "db.example.org" and got["dbname"] == "fedfhe" and got["sslcert"] == str(tmp_path / "n.crt")
