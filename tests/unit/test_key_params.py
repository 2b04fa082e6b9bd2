"""The key-parameter fingerprint: equal for a retrained tree, different for other n_bits, signed in the manifest.

Three small decision trees (depth 2, fitted on other rows or with other n_bits, a second each) are
compiled to real bundles; old manifests without the field still verify, a wrong one is refused.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfhe_common.contracts import bundle, key_params
from fedfhe_common.contracts.manifest import MANIFEST, canonical_body
from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.pki import release
from fedfhe_common.runtime.errors import IntegrityError

SPECS: dict[str, Any] = {"keyset": {
    "lweSecretKeys": [{"id": 0, "params": {"lweDimension": 1352, "integerPrecision": 64, "keyType": "binary"}}],
    "lweBootstrapKeys": [{"id": 0, "inputId": 1, "outputId": 0, "compression": "seed",
                          "params": {"levelCount": 1, "baseLog": 23, "glweDimension": 1, "polynomialSize": 2048,
                                     "variance": 8.4e-31, "integerPrecision": 64, "keyType": "binary",
                                     "inputLweDimension": 800, "modulus": {"modulus": {"native": {}}}}}],
    "lweKeyswitchKeys": [], "packingKeyswitchKeys": [],
}, "circuits": [{"name": "ignored: only the keyset counts"}]}


def test_fingerprint_is_canonical_and_follows_every_key_parameter():
    reordered = {"circuits": [], "keyset": dict(reversed(list(SPECS["keyset"].items())))}
    assert key_params.fingerprint(reordered) == key_params.fingerprint(SPECS)  # key order, circuits: irrelevant
    other = copy.deepcopy(SPECS)
    other["keyset"]["lweBootstrapKeys"][0]["params"]["polynomialSize"] = 1024
    assert key_params.fingerprint(other) != key_params.fingerprint(SPECS)
    assert key_params.differences(SPECS["keyset"], other["keyset"]) == \
        "lweBootstrapKeys[0].params.polynomialSize: 2048 -> 1024"
    fewer = copy.deepcopy(SPECS)
    fewer["keyset"]["lweBootstrapKeys"] = []
    assert key_params.differences(SPECS["keyset"], fewer["keyset"]) == "lweBootstrapKeys: 1 keys, now 0"
    assert key_params.differences(SPECS["keyset"], SPECS["keyset"]) == ""
    with pytest.raises(IntegrityError, match="no keyset"):
        key_params.fingerprint({"circuits": []})


def test_a_manifest_without_the_field_is_accepted_and_a_wrong_one_refused():
    key_params.check_recorded({"model_id": "m"}, SPECS, "old bundle")  # written before the field existed
    assert key_params.recorded({"model_id": "m"}) is None
    good = {key_params.FIELD: key_params.fingerprint(SPECS)}
    key_params.check_recorded(good, SPECS, "bundle")
    assert key_params.recorded(good) == good[key_params.FIELD]
    with pytest.raises(IntegrityError, match="records key parameters .* needs"):
        key_params.check_recorded({key_params.FIELD: "0" * 64}, SPECS, "bundle")
    with pytest.raises(IntegrityError, match="not a SHA-256"):
        key_params.check_recorded({key_params.FIELD: "../x"}, SPECS, "bundle")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Signed bundles of depth-2 trees: "v1", "v2" (other rows, same parameters), "bits4" (n_bits 4)."""
    from concrete.ml.sklearn import DecisionTreeClassifier
    from sklearn.datasets import load_digits

    from fedfhe_coordinator.fhe.compile import compile_concrete_bundle

    X, y = load_digits(return_X_y=True)
    key = Ed25519PrivateKey.generate()
    out: dict[str, Any] = {"key": key}
    for name, rows, n_bits in (("v1", slice(0, 900), 3), ("v2", slice(900, 1797), 3), ("bits4", slice(0, 900), 4)):
        model = DecisionTreeClassifier(max_depth=2, n_bits=n_bits, random_state=0).fit(X[rows], y[rows])
        result = compile_concrete_bundle(model, tmp_path_factory.mktemp(name) / "bundle", model_id="t",
                                         version=name, schema=DIGITS, calibration=X[:100], signing_key=key)
        out[name] = result
    return out


def _specs(directory: Path) -> dict[str, Any]:
    with zipfile.ZipFile(directory / "client.zip") as zf:
        return json.loads(zf.read("client.specs.json"))


def test_compile_signs_the_fingerprint_equal_for_a_retrained_tree_other_for_other_n_bits(trees):
    v1, v2, bits4 = (trees[n] for n in ("v1", "v2", "bits4"))
    public = trees["key"].public_key()
    signed = {name: bundle.read(trees[name].directory, public) for name in ("v1", "v2", "bits4")}
    for name, meta in signed.items():
        assert meta[key_params.FIELD] == key_params.fingerprint(_specs(trees[name].directory))
        assert trees[name].meta[key_params.FIELD] == meta[key_params.FIELD]  # compile reports what it signed
    assert _mlir(v1.directory) != _mlir(v2.directory)  # two different trees ...
    assert signed["v1"][key_params.FIELD] == signed["v2"][key_params.FIELD]  # ... that take the same keys
    assert signed["v1"][key_params.FIELD] != signed["bits4"][key_params.FIELD]
    assert "lweBootstrapKeys" in key_params.differences(_specs(v1.directory)["keyset"],
                                                       _specs(bits4.directory)["keyset"])


def _mlir(directory: Path) -> bytes:
    with zipfile.ZipFile(directory / "server.zip") as zf:
        return zf.read("circuit.mlir")


def _resign(directory: Path, key: Ed25519PrivateKey, edit: Any) -> None:
    body = json.loads((directory / MANIFEST).read_bytes())
    edit(body)
    (directory / MANIFEST).write_bytes(canonical_body(body))
    release.sign_manifest(directory, key)


def test_readers_recheck_the_signed_fingerprint_and_accept_manifests_without_one(trees, tmp_path):
    key, public = trees["key"], trees["key"].public_key()
    old = tmp_path / "old"
    old.mkdir()
    bundle.copy(trees["v1"].directory, old)
    _resign(old, key, lambda body: body.pop(key_params.FIELD))  # a bundle of before this change
    meta, _ = bundle.read_verified(old, public)
    assert key_params.recorded(meta) is None and bundle.read(old, public)["version"] == "v1"
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    bundle.copy(trees["v1"].directory, wrong)
    bits4 = bundle.read(trees["bits4"].directory, public)[key_params.FIELD]
    _resign(wrong, key, lambda body: body.update({key_params.FIELD: bits4}))  # signed, but not its client.zip's
    for read in (bundle.read, lambda d, k: bundle.read_verified(d, k)[0]):
        with pytest.raises(IntegrityError, match="records key parameters"):
            read(wrong, public)


def test_an_owner_takes_the_keys_of_a_version_with_the_same_fingerprint_only(trees, tmp_path):
    from fedfhe_owner.predict import key_reuse
    from fedfhe_owner.predict.keys import ModelKeys

    public, state = trees["key"].public_key(), tmp_path / "state"
    keys = {}
    for name in ("v1", "v2", "bits4"):
        d = trees[name].directory
        keys[name] = ModelKeys(state, "t", name)
        keys[name].install_client_specs((d / "client.zip").read_bytes(), (d / MANIFEST).read_bytes(),
                                        release.read_signature(d), public, f"test {name}")
    keys["v1"].keyset_path.write_bytes(b"v1 keyset")  # stands for the keys generated for version v1
    keys["v1"].remember_key_id("node:1", "a" * 32, "sha-of-v1-evaluation-keys")
    fingerprint = {name: key_params.recorded(keys[name].verified_specs(public)) for name in keys}

    assert key_reuse.Siblings(state, "t", "bits4", fingerprint["bits4"], public).keys == []  # other n_bits
    assert key_reuse.Siblings(state, "t", "v2", None, public).keys == []  # a manifest of before: new keys
    found = key_reuse.Siblings(state, "t", "v2", fingerprint["v2"], public)
    assert [k.version for k in found.keys] == ["v1"]
    assert key_reuse.adopt_keyset(keys["v2"], found) == "v1"
    v1, v2 = keys["v1"].keyset_path.stat(), keys["v2"].keyset_path.stat()
    assert (v2.st_ino, v2.st_mode & 0o777) == (v1.st_ino, 0o600)  # the same file: no second copy of the keys
    assert key_reuse.adopt_keyset(keys["v2"], found) is None  # it has keys now
    assert key_reuse.shared_key_id(found, "node:1", "sha-of-v1-evaluation-keys") == ("a" * 32, "v1")
    assert key_reuse.shared_key_id(found, "node:1", "other evaluation keys") is None
    assert key_reuse.shared_key_id(found, "node:2", "sha-of-v1-evaluation-keys") is None

    keys["v2"].remember_key_id("node:1", "a" * 32, "sha-of-v1-evaluation-keys", attached_from="v1")
    assert key_reuse.forget_everywhere(state, "t", "node:1", "a" * 32) == ["v1", "v2"]
    assert keys["v1"].recorded_key_id("node:1") is None and keys["v2"].recorded_key_id("node:1") is None

    (keys["v1"].dir / release.SIGNATURE).write_bytes(b"\0" * 64)  # a stored manifest no longer verifies
    assert [k.version for k in key_reuse.Siblings(state, "t", "bits4", fingerprint["v2"], public).keys] == ["v2"]
