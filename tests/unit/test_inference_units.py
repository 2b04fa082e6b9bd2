"""Pieces of the inference path without a server: stubs, config, key store, FHE runner, bundles, CLI handlers."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import threading

import grpc
import pytest
import yaml

from fedfhe_common.contracts.manifest import write_manifest
from fedfhe_common.pki.release import load_signing_key, load_verify_key, sign_manifest
from fedfhe_common.runtime.errors import ConfigError, FedfheError, IntegrityError
from fedfhe_inference import config as inference_config
from fedfhe_inference.bundles import publish_bundle, version_key
from fedfhe_inference.errors import ServiceError
from fedfhe_inference.keystore import KeyStore, check_key_id
from fedfhe_inference.runner import FheRunner


def test_committed_stubs_are_fresh():
    from fedfhe_proto.generate import stale_files

    assert stale_files() == [], "run: python -m fedfhe_proto.generate"


def _cfg(tmp_path, **extra):
    data = {"listen": "127.0.0.1:50051", "certfile": "a.crt", "keyfile": "a.key", "ca_certfile": "ca.crt",
            "bundles_dir": "bundles", "keys_dir": "keys", "release_public_key": "release.pub", **extra}
    path = tmp_path / "inference.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_config_loads():
    from pathlib import Path

    example = Path(inference_config.__file__).parents[1] / "inference.example.yaml"
    cfg = inference_config.load(example)
    assert cfg.limits.max_key_bytes > 77 << 20 and cfg.deadlines.predict_s > 0


def test_config_loads_with_defaults_and_names_bad_keys(tmp_path):
    cfg = inference_config.load(_cfg(tmp_path, limits={"max_batch_rows": 8}))
    assert cfg.limits.max_batch_rows == 8 and cfg.limits.max_keys_per_owner == 8
    assert cfg.bundles_dir == tmp_path / "bundles" and cfg.fhe_workers >= 1
    for extra, message in (
        ({"listen": "nowhere"}, "listen"),
        ({"limits": {"max_batch_rows": 0}}, "limits.max_batch_rows"),
        ({"limits": {"max_batch": 3}}, "limits.max_batch"),
        ({"deadlines": {"predict_s": -1}}, "deadlines.predict_s"),
        ({"workers": "two"}, "workers"),
    ):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            inference_config.load(_cfg(tmp_path, **extra))


@pytest.mark.parametrize("bad", ["", "../../etc/passwd",
                                 "A" * 32, "0" * 31, "0" * 33, "0" * 30 + "/x", ".." + "0" * 30])
def test_key_ids_are_only_what_the_server_issues(bad):
    with pytest.raises(ServiceError) as info:
        check_key_id(bad)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def lr_eval_keys(lr_bundles):
    from concrete.ml.deployment import FHEModelClient

    client = FHEModelClient(str(lr_bundles["1"].directory))
    client.generate_private_and_evaluation_keys()
    return client.get_serialized_evaluation_keys()


def _store(root, **kw):
    opts = {"max_keys_per_owner": 2, "max_key_bytes": 1 << 20, "max_chunk_bytes": 1 << 16, "cache_bytes": 1 << 20}
    return KeyStore(root, **{**opts, **kw})


def test_key_store_is_atomic_owned_and_survives_restart(tmp_path, lr_eval_keys):
    store = _store(tmp_path)
    sha = hashlib.sha256(lr_eval_keys).hexdigest()
    with store.upload("alice", "m", "1", len(lr_eval_keys), sha) as up:
        up.write(lr_eval_keys)
        record = up.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{record.key_id}.evk", f"{record.key_id}.json"])
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.iterdir())
    with pytest.raises(ServiceError) as info:
        store.get(record.key_id, "bob")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    # a failed upload leaves nothing behind
    with pytest.raises(ServiceError), store.upload("alice", "m", "1", 10, "0" * 64) as up:
        up.write(b"12345")
        up.commit()
    assert len(list(tmp_path.iterdir())) == 2
    # restart: the record is back, an orphaned key file (crash between renames) is swept
    (tmp_path / ("f" * 32 + ".evk")).write_bytes(b"orphan")
    again = _store(tmp_path)
    assert again.get(record.key_id, "alice") == record
    assert not (tmp_path / ("f" * 32 + ".evk")).exists()
    assert again.evaluation_keys(record) is not None  # loaded from disk after the restart
    again.delete(record.key_id, "alice")
    assert list(tmp_path.iterdir()) == []


def test_key_store_quota_counts_uploads_in_flight(tmp_path, lr_eval_keys):
    store = _store(tmp_path, max_keys_per_owner=1)
    sha = hashlib.sha256(lr_eval_keys).hexdigest()
    with store.upload("alice", "m", "1", len(lr_eval_keys), sha):
        with pytest.raises(ServiceError) as info, store.upload("alice", "m", "1", len(lr_eval_keys), sha):
            pass
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with store.upload("bob", "m", "1", len(lr_eval_keys), sha):
            pass  # quotas are per owner


class _BlockingServer:
    """Stands in for FHEModelServer: run() blocks until released, or fails on a chosen row."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.release = threading.Event()
        self.fail = fail or set()

    def run(self, value, keys):
        if value in self.fail:
            raise RuntimeError("Tried to transform a transport value with incompatible variance.")
        self.release.wait(30)

        class _Result:
            def serialize(self):
                return f"r{value}".encode()

        return _Result()


def test_runner_enforces_the_deadline_and_reports_the_first_bad_row():
    runner = FheRunner(2)
    slow = _BlockingServer()
    try:
        with pytest.raises(ServiceError) as info:
            runner.run_batch(slow, [0, 1, 2], None, 0.2, lambda: True, "m 1")
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        slow.release.set()
    bad = _BlockingServer(fail={1, 2})
    bad.release.set()
    with pytest.raises(ServiceError) as info:
        runner.run_batch(bad, [0, 1, 2], None, 30, lambda: True, "m 1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.message.startswith("row 1:")
    ok = _BlockingServer()
    ok.release.set()
    results, _ = runner.run_batch(ok, [0, 1, 2], None, 30, lambda: True, "m 1")
    assert results == [b"r0", b"r1", b"r2"]
    runner.shutdown()


def test_versions_sort_naturally():
    assert max(["1", "2", "10", "9"], key=version_key) == "10"
    assert max(["20250101", "20250102"], key=version_key) == "20250102"


def test_publish_is_verified_and_versions_are_immutable(lr_bundles, tmp_path, pki):
    bundles, pub = tmp_path / "bundles", load_verify_key(pki / "release.pub")
    dest, installed = publish_bundle(lr_bundles["1"].directory, bundles, pub)
    assert installed and dest == bundles / "digits-lr" / "1"
    assert publish_bundle(lr_bundles["1"].directory, bundles, pub) == (dest, False)
    clash = tmp_path / "clash"
    shutil.copytree(lr_bundles["2"].directory, clash)
    meta = json.loads((clash / "manifest.json").read_text())
    meta["version"] = "1"
    write_manifest(clash, meta.pop("kind"), list(meta.pop("files")), {k: v for k, v in meta.items()
                                                                       if k != "format_version"})
    sign_manifest(clash, load_signing_key(pki / "release.key"))
    with pytest.raises(FedfheError, match="immutable"):
        publish_bundle(clash, bundles, pub)
    (clash / "client.zip").write_bytes(b"swapped")
    with pytest.raises(IntegrityError):
        publish_bundle(clash, bundles, pub)
    assert sorted(p.name for p in (bundles / "digits-lr").iterdir()) == ["1"]  # no temp dirs left


def _run(register, argv):
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(argv)
    return args.fn(args)


def test_server_commands_train_local_choose_and_compile(digits, tmp_path, capsys, pki):
    from fedfhe_common.contracts.artifact import TrainingArtifact
    from fedfhe_common.contracts.manifest import verify_manifest
    from fedfhe_coordinator.fhe.fhe_commands import register

    art = tmp_path / "artifact"
    assert _run(register, ["train-local", "--data", str(digits.train_csv), "--model", "SGDClassifier",
                           "--epochs", "3", "--eval", str(digits.test_csv), "--out", str(art),
                           "--release-key", str(pki / "release.key")]) == 0
    artifact = TrainingArtifact.load(art, load_verify_key(pki / "release.pub"))
    assert artifact.origin == "local" and artifact.family == "SGDClassifier" and "eval" in artifact.metrics
    choice = tmp_path / "choice.json"
    assert _run(register, ["choose-n-bits", "--artifact", str(art), "--eval", str(digits.test_csv), "--min", "6",
                           "--max", "9", "--json", str(choice)]) == 0
    chosen = json.loads(choice.read_text())["chosen_n_bits"]
    assert 6 <= chosen <= 9
    out, key = tmp_path / "bundle", ["--release-key", str(pki / "release.key")]
    assert _run(register, ["compile", "--artifact", str(art), "--out", str(out), "--n-bits", str(chosen),
                           "--eval", str(digits.test_csv), "--model-id", "digits-sgd", "--model-version", "7",
                           *key]) == 0
    meta = verify_manifest(out, "fedfhe-fhe-bundle")
    assert (meta["model_id"], meta["version"], meta["n_bits"]) == ("digits-sgd", "7", chosen)
    m = meta["metrics"]
    assert (m["clear_accuracy"] - m["fhe_simulated_accuracy"]) * 100 <= 0.5
    assert meta["source"]["origin"] == "local" and meta["calibration"]["uniform_rows"] == 200
    assert "bundle sha256" in capsys.readouterr().out
    with pytest.raises(FedfheError, match="already exists"):
        _run(register, ["compile", "--artifact", str(art), "--out", str(out), *key])
    # --n-bits auto: the same choice as choose-n-bits (same calibration rows), recorded in the manifest.
    auto = tmp_path / "auto"
    assert _run(register, ["compile", "--artifact", str(art), "--out", str(auto), "--n-bits", "auto",
                           "--eval", str(digits.test_csv), *key]) == 0
    meta = verify_manifest(auto, "fedfhe-fhe-bundle")
    assert meta["n_bits"] == meta["n_bits_choice"]["chosen_n_bits"] <= chosen
    out = capsys.readouterr()
    assert f"chose n_bits={meta['n_bits']}" in out.out
    # Long steps say what they do as they go (stderr): each candidate, the compile, the signing.
    assert "fedfhe-coordinator compile: [" in out.err and f"n_bits {meta['n_bits']}: simulated" in out.err
    assert "compiling SGDClassifier to FHE" in out.err and "signing the bundle" in out.err
    with pytest.raises(ConfigError, match="needs --eval"):
        _run(register, ["compile", "--artifact", str(art), "--out", str(tmp_path / "b2"), "--n-bits", "auto", *key])
    with pytest.raises(ConfigError, match="model id"):
        _run(register, ["compile", "--artifact", str(art), "--out", str(tmp_path / "b3"), "--model-id", "../x", *key])
    with pytest.raises(SystemExit):
        _run(register, ["compile", "--artifact", str(art), "--out", str(tmp_path / "b4"), "--n-bits", "lots", *key])
    (art / "params.npz").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        _run(register, ["compile", "--artifact", str(art), "--out", str(tmp_path / "b5"), *key])
