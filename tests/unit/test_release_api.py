"""The release step as Python calls (issue 28): fedfhe_coordinator.api.compile_bundle and fedfhe_inference.api.publish,
the functions `fedfhe-coordinator compile` and `fedfhe-inference publish` are thin layers over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedfhe_common.contracts import bundle
from fedfhe_common.pki.release import load_verify_key
from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_coordinator import api as coordinator_api
from fedfhe_coordinator.api import BundleResult, compile_bundle
from fedfhe_inference.api import Published, publish


@pytest.fixture(scope="module")
def compiled(lr_artifact: Path, pki: Path, digits, tmp_path_factory: pytest.TempPathFactory) -> BundleResult:
    """One real compile (digits LogisticRegression, n_bits 8), scored on the public test file."""
    out = tmp_path_factory.mktemp("api") / "digits-lr-3"
    return compile_bundle(lr_artifact, out, model_id="digits-lr", model_version="3", release_key=pki / "release.key",
                          n_bits=8, eval_set=digits.test_csv)


def test_compile_bundle_writes_a_signed_bundle_of_that_version(compiled, pki, digits):
    assert (compiled.model_id, compiled.version, compiled.meta["n_bits"]) == ("digits-lr", "3", 8)
    meta = bundle.read(compiled.directory, load_verify_key(pki / "release.pub"))
    assert meta["version"] == "3" and meta["metrics"]["eval_rows"] == len(digits.y_test)
    assert meta["metrics"]["fhe_simulated_accuracy"] > 0.8, meta["metrics"]


def test_compile_bundle_refuses_before_compiling(lr_artifact, pki, digits, tmp_path, compiled):
    common = {"model_id": None, "model_version": None, "release_key": pki / "release.key"}
    with pytest.raises(ConfigError, match=r"--n-bits auto needs --eval FILE \(eval_set in Python\)"):
        compile_bundle(lr_artifact, tmp_path / "a", n_bits="auto", **common)
    with pytest.raises(ConfigError, match="eval_labels names the labels of an IDX eval_set file"):
        compile_bundle(lr_artifact, tmp_path / "b", eval_set=(digits.X_test, digits.y_test),
                       eval_labels=tmp_path / "labels.idx", **common)
    with pytest.raises(FedfheError, match="exists"):  # the output directory, before the key and the artifact
        compile_bundle(tmp_path / "no-such-artifact", compiled.directory, **common)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_compile_command_is_a_layer_over_compile_bundle(monkeypatch, tmp_path, capsys):
    from fedfhe_coordinator.cli import main

    seen: dict = {}

    def fake(artifact_dir, out_dir, **kwargs):
        seen.update(kwargs, artifact_dir=artifact_dir, out_dir=out_dir)
        return BundleResult(Path(out_dir), "m", kwargs["model_version"], "ab" * 32, {"n_bits": 6})

    monkeypatch.setattr(coordinator_api, "compile_bundle", fake)
    assert main(["compile", "--artifact", "art", "--out", str(tmp_path / "b"), "--release-key", "release.key",
                 "--model-id", "m", "--model-version", "9", "--n-bits", "6", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "9"
    assert (seen["model_id"], seen["model_version"], seen["n_bits"], seen["eval_set"]) == ("m", "9", 6, None)
    assert seen["release_key"] == Path("release.key") and seen["artifact_dir"] == Path("art")


def test_publish_installs_once_from_a_config_or_a_bundles_dir(compiled, pki, tmp_path):
    bundles = tmp_path / "bundles"
    done = publish(compiled.directory, None, bundles_dir=bundles, release_public_key=pki / "release.pub")
    assert done == Published(bundles / "digits-lr" / "3", True, None)
    config = tmp_path / "inference.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:50051", "certfile": "a.crt", "keyfile": "a.key", "ca_certfile": "ca.crt",
        "bundles_dir": str(bundles), "keys_dir": str(tmp_path / "keys"),
        "release_public_key": str(pki / "release.pub")}))
    again = publish(compiled.directory, config, reload=True)  # the identical bundle: a no-op
    assert not again.installed and again.directory == done.directory
    assert again.reload is not None and again.reload.startswith("no pid_file in the config")


def test_publish_names_what_is_missing(compiled, tmp_path):
    with pytest.raises(ConfigError, match="--bundles-dir needs --release-public-key"):
        publish(compiled.directory, None, bundles_dir=tmp_path / "bundles")
    with pytest.raises(ConfigError, match="give --config inference.yaml or --bundles-dir DIR"):
        publish(compiled.directory, None)
