"""One stored key set serving several versions of a model: attach, detach, delete, revoke, restart.

The key store on a temporary directory and ``key_sharing.attach`` with stand-in bundles (a keyset and
its fingerprint each): the refusals an owner's hostile or mistaken AttachKeys gets, and what stays.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from fedfhe_common.contracts import key_params
from fedfhe_inference import key_sharing
from fedfhe_inference.errors import ServiceError, invalid, not_found
from fedfhe_inference.keystore import KeyStore

KEYSET: dict[str, Any] = {
    "lweSecretKeys": [{"id": 0, "params": {"lweDimension": 777, "integerPrecision": 64, "keyType": "binary"}}],
    "lweBootstrapKeys": [{"id": 0, "params": {"polynomialSize": 2048, "glweDimension": 1}}],
    "lweKeyswitchKeys": [], "packingKeyswitchKeys": [],
}
OTHER = copy.deepcopy(KEYSET)
OTHER["lweBootstrapKeys"][0]["params"]["polynomialSize"] = 4096  # what other n_bits does to a tree's key set


def _bundle(model_id: str, version: str, keyset: dict[str, Any]) -> Any:
    return SimpleNamespace(model_id=model_id, version=version, key_set=keyset,
                           key_params_sha256=key_params.fingerprint({"keyset": keyset}))


class Registry:
    """The served bundles, as BundleRegistry.get answers for them."""

    def __init__(self, *bundles: Any) -> None:
        self.bundles = {(b.model_id, b.version): b for b in bundles}

    def get(self, model_id: str, version: str = "") -> Any:
        if (model_id, version) not in self.bundles:
            raise not_found(f"model {model_id!r} has no version {version!r}")
        return self.bundles[(model_id, version)]


def _store(root: Path) -> KeyStore:
    return KeyStore(root, max_keys_per_owner=4, max_key_bytes=1 << 20, max_chunk_bytes=1 << 20, cache_bytes=0)


def _upload(store: KeyStore, owner: str, serial: str, version: str = "1", fingerprint: str = "",
            data: bytes = b"evaluation keys") -> str:
    with store.upload(owner, "m", version, len(data), hashlib.sha256(data).hexdigest(), serial, fingerprint) as up:
        up.write(data)
        return up.commit(lambda path, key_id: None).key_id


V1, V2, BITS = _bundle("m", "1", KEYSET), _bundle("m", "2", KEYSET), _bundle("m", "3", OTHER)


def _attach(store: KeyStore, registry: Registry, key_id: str, version: str, owner: str = "alice",
            claimed: str = "", serial: str = "b0", checked: list | None = None) -> Any:
    def validate(bundle: Any, path: Path, cache_id: str) -> None:
        if checked is not None:
            checked.append((bundle.version, path.name, cache_id))

    return key_sharing.attach(store, registry, validate, owner, serial, key_id, "m", version, claimed,
                              deadline=float("inf"))


def test_attached_keys_serve_both_versions_across_a_restart_and_go_with_the_last(tmp_path):
    store, registry = _store(tmp_path), Registry(V1, V2, BITS)
    key = _upload(store, "alice", "a0", fingerprint=V1.key_params_sha256)
    checked: list = []
    record = _attach(store, registry, key, "2", claimed=V2.key_params_sha256, checked=checked)
    assert record.versions == ("1", "2") and record.serves("m", "2") and not record.serves("other", "2")
    assert checked == [("2", f"{key}.evk", "")]  # the upload's check, on the stored file, not a cached parse
    assert _attach(store, registry, key, "2", checked=checked).versions == ("1", "2")  # again: nothing to do
    assert len(checked) == 1
    assert store.owned_by("alice") == [record]  # one key set: the owner's quota counts it once
    restarted = _store(tmp_path)
    assert restarted.get(key, "alice").versions == ("1", "2")
    kept, deleted = restarted.detach(key, "alice", "m", "1")  # the owner is done with version 1
    assert (kept.versions, deleted, (tmp_path / f"{key}.evk").is_file()) == (("2",), False, True)
    assert restarted.detach(key, "alice", "m", "1") == (kept, False)  # again, or from another host: nothing to do
    assert _store(tmp_path).get(key, "alice").versions == ("2",)
    gone, deleted = restarted.detach(key, "alice", "m", "2")
    assert deleted and gone.size == len(b"evaluation keys")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_attach_refuses_what_is_not_the_callers_or_not_the_same_key_set(tmp_path):
    store, registry = _store(tmp_path), Registry(V1, V2, BITS, _bundle("n", "1", KEYSET))
    key = _upload(store, "alice", "a0", fingerprint=V1.key_params_sha256)

    def refused(code: grpc.StatusCode, match: str, **kwargs: Any) -> None:
        args = {"key_id": key, "version": "2", **kwargs}
        with pytest.raises(ServiceError, match=match) as err:
            _attach(store, registry, args.pop("key_id"), args.pop("version"), **args)
        assert err.value.code == code

    refused(grpc.StatusCode.NOT_FOUND, "no evaluation keys with id", key_id="0" * 32)
    refused(grpc.StatusCode.INVALID_ARGUMENT, "malformed", key_id="../" + key)
    refused(grpc.StatusCode.PERMISSION_DENIED, "belong to another owner", owner="mallory")
    refused(grpc.StatusCode.NOT_FOUND, "has no version '9'", version="9")
    refused(grpc.StatusCode.INVALID_ARGUMENT, "must name the version", version="")
    refused(grpc.StatusCode.INVALID_ARGUMENT, "64 lowercase hex", claimed="x" * 64)
    refused(grpc.StatusCode.INVALID_ARGUMENT, "its signed manifest records the former", claimed=BITS.key_params_sha256)
    # Other n_bits: the parameter that differs is named, with both values.
    refused(grpc.StatusCode.INVALID_ARGUMENT, r"lweBootstrapKeys\[0\]\.params\.polynomialSize: 2048 -> 4096; "
            "generate and upload keys for 3", version="3")
    with pytest.raises(ServiceError, match="belong to model m, not n"):
        key_sharing.attach(store, registry, lambda *a: None, "alice", "", key, "n", "1", "", float("inf"))
    assert store.get(key, "alice").versions == ("1",)  # nothing was recorded by any of them


def test_keys_the_circuit_check_refuses_are_not_attached(tmp_path):
    store, registry = _store(tmp_path), Registry(V1, V2)
    key = _upload(store, "alice", "a0", fingerprint=V1.key_params_sha256)

    def validate(bundle: Any, path: Path, cache_id: str) -> None:
        raise invalid("the uploaded bytes are not this model's evaluation keys: lweBootstrapKeys[0] differs")

    with pytest.raises(ServiceError, match=f"evaluation keys {key} do not fit m version 2: .*lweBootstrapKeys"):
        key_sharing.attach(store, registry, validate, "alice", "", key, "m", "2", "", float("inf"))
    assert store.get(key, "alice").versions == ("1",)


def test_keys_of_before_fingerprints_compare_with_their_version_while_it_is_served(tmp_path):
    store = _store(tmp_path)
    key = _upload(store, "alice", "a0")  # no fingerprint recorded: uploaded by a node of before key sharing
    meta = tmp_path / f"{key}.json"
    old = {k: v for k, v in json.loads(meta.read_text()).items() if k not in ("key_params_sha256", "served",
                                                                               "attach_serials")}
    meta.write_text(json.dumps(old))  # exactly what such a node wrote
    store = _store(tmp_path)
    assert store.get(key, "alice").versions == ("1",)
    with pytest.raises(ServiceError, match="no longer served to compare") as err:
        _attach(store, Registry(V2), key, "2")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _attach(store, Registry(V1, V2), key, "2").versions == ("1", "2")


def test_revoking_the_certificate_that_attached_deletes_the_shared_keys(tmp_path):
    store, registry = _store(tmp_path), Registry(V1, V2)
    key = _upload(store, "alice", "a0", fingerprint=V1.key_params_sha256)
    other = _upload(store, "alice", "a0", fingerprint=V1.key_params_sha256, data=b"other keys")
    _attach(store, registry, key, "2", serial="b1")  # alice's renewed certificate attached version 2
    assert store.get(key, "alice").serials == ("a0", "b1")
    gone = store.evict(frozenset({0xB1}), idle_s=0)
    assert [(r.key_id, "attached them (serial b1) is revoked" in why) for r, why in gone] == [(key, True)]
    assert [r.key_id for r in _store(tmp_path).owned_by("alice")] == [other]


@pytest.mark.parametrize("bad", [{"served": "1"}, {"served": [1]}, {"attach_serials": ["../x"]}, {"serial": "zz"}])
def test_a_record_with_a_hostile_served_list_or_serial_is_ignored_at_start_up(tmp_path, bad):
    key = _upload(_store(tmp_path), "alice", "a0")
    meta = tmp_path / f"{key}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **bad}))
    assert _store(tmp_path).owned_by("alice") == []
