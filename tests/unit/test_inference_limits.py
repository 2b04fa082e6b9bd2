"""Units of the no-stall limits and safe display: config validation, owner slots, key byte caps, escaping."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import grpc
import pytest

from fedfhe_common.runtime.config import from_dict
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_inference.config import Limits
from fedfhe_inference.display import OneLineLogs, shown, status_text
from fedfhe_inference.errors import ServiceError
from fedfhe_inference.keystore import KeyRecord, KeyStore
from fedfhe_inference.limits import OwnerSlots, server_options


def test_limits_defaults_and_validation():
    d = Limits()
    assert (d.max_calls_per_owner, d.max_streams_per_owner, d.message_idle_s) == (4, 2, 30.0)
    assert d.max_owner_key_bytes == 1 << 30 and d.max_stored_key_bytes == 8 << 30
    opts = dict(server_options(d))
    assert opts["grpc.keepalive_time_ms"] == 60_000 and opts["grpc.max_connection_idle_ms"] == 300_000
    assert opts["grpc.max_connection_age_ms"] == 3_600_000 and opts["grpc.max_connection_age_grace_ms"] == 900_000
    for bad, match in (
        ({"message_idle_s": 0.5}, "limits.message_idle_s: must be >= 1"),
        ({"max_streams_per_owner": 5}, "max_streams_per_owner: must be <= limits.max_calls_per_owner"),
        ({"max_owner_key_bytes": 9 << 30}, "max_owner_key_bytes: must be <= limits.max_stored_key_bytes"),
        ({"keepalive_timeout_s": 60}, "keepalive_timeout_s: must be < limits.keepalive_s"),
        ({"connection_age_s": float("inf")}, "connection_age_s: must be at most"),
        ({"max_calls_per_owner": "4"}, "limits.max_calls_per_owner: expected an integer"),
    ):
        with pytest.raises(ConfigError, match=match):
            from_dict(Limits, bad, "limits")


def test_owner_slots_refuse_at_the_limit_and_release_once():
    slots = OwnerSlots(max_calls=2, max_streams=1)
    a = slots.take("alice", streaming=True)
    with pytest.raises(ServiceError, match="max_streams_per_owner") as info:
        slots.take("alice", streaming=True)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    b = slots.take("alice", streaming=False)
    with pytest.raises(ServiceError, match="max_calls_per_owner"):
        slots.take("alice", streaming=False)
    slots.take("bob", streaming=True)  # another owner is not affected
    a()
    a()  # idempotent
    assert slots.in_use("alice") == (1, 0)
    b()
    assert slots.in_use("alice") == (0, 0)


def _store(root: Path, **kw) -> KeyStore:
    return KeyStore(root, max_keys_per_owner=8, max_key_bytes=1 << 20, max_chunk_bytes=1 << 16, cache_bytes=0, **kw)


def _stored(root: Path, key_id: str, owner: str, size: int) -> None:
    (root / f"{key_id}.evk").write_bytes(b"k" * size)
    record = KeyRecord(key_id, owner, "m", "1", size, "0" * 64, 0.0)
    (root / f"{key_id}.json").write_text(json.dumps(asdict(record)))


def test_key_byte_caps_count_stored_keys_and_uploads_in_progress(tmp_path):
    root = tmp_path / "keys"
    root.mkdir()
    _stored(root, "a" * 32, "alice", 600)
    _stored(root, "b" * 32, "bob", 300)
    store = _store(root, max_owner_bytes=1000, max_total_bytes=1500)
    files = sorted(p.name for p in root.iterdir())
    with pytest.raises(ServiceError, match="limits.max_owner_key_bytes") as info, \
            store.upload("alice", "m", "1", 401, "0" * 64):
        pass
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with store.upload("alice", "m", "1", 400, "0" * 64), \
            pytest.raises(ServiceError, match="limits.max_stored_key_bytes"), \
            store.upload("carol", "m", "1", 201, "0" * 64):  # alice's upload (fits exactly) is still open
        pass
    with store.upload("carol", "m", "1", 201, "0" * 64):  # the finished (uncommitted) upload freed its bytes
        pass
    assert sorted(p.name for p in root.iterdir()) == files  # nothing stored was touched
    assert store.get("a" * 32, "alice").size == 600


def test_shown_bounds_and_escapes():
    assert shown("alice\x00evil") == "alice\\x00evil"
    assert shown("a\nb\r\u2028c\u202e") == "a\\nb\\r\\u2028c\\u202e"
    long = shown("m" * (60 << 20))
    assert len(long) < 200 and long.endswith(f"... ({60 << 20} chars)")
    assert shown(b"\xff\x00ok") == "\ufffd\\x00ok"
    assert shown(shown("a\\nb\n")) == shown("a\\nb\n")  # idempotent
    assert len(status_text("x" * 10_000)) < 1100


def test_log_records_become_one_escaped_line():
    record = logging.LogRecord("fedfhe", logging.INFO, __file__, 1, "owner=%s done", ("x\n2026 INFO forged",), None)
    assert OneLineLogs().filter(record)
    assert record.getMessage() == "owner=x\\n2026 INFO forged done"
