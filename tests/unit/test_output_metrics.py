"""Outputs speak a regressor's metric: R² as a number, never "accuracy": 0.0 or a percentage (issue 28)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedfhe_coordinator.fhe.fhe_commands import _fmt
from fedfhe_owner.predict.encrypted import PredictResult
from fedfhe_owner.predict.predict_io import write_predictions


def result(predictions: list, classes: list) -> PredictResult:
    scores = np.asarray(predictions, dtype=np.float64).reshape(-1, 1)
    return PredictResult(model_id="m", version="1", bundle_sha256="0" * 64, key_id="k", keys_uploaded=False,
                         predictions=np.asarray(predictions), scores=scores, probabilities=False, classes=classes)


def test_a_regressors_predictions_file_carries_r2(tmp_path):
    out = tmp_path / "p.json"
    write_predictions(out, result([1.0, 2.0, 3.0, 4.0], []), np.array([1.0, 2.0, 3.0, 5.0]))
    doc = json.loads(out.read_text())
    assert "accuracy" not in doc and doc["r2"] == pytest.approx(1 - 1 / 8.75)  # residual 1 over 8.75 around 2.75
    assert doc["mae"] == pytest.approx(0.25)  # the error in the target's unit too (issue 28: "r2/mae")


def test_a_classifiers_file_keeps_accuracy(tmp_path):
    out = tmp_path / "p.json"
    write_predictions(out, result([0, 1, 1, 0], [0, 1]), np.array([0, 1, 0, 0]))
    assert json.loads(out.read_text())["accuracy"] == 0.75


def test_compile_prints_r2_as_a_number_and_accuracy_as_a_percentage():
    assert _fmt(0.4567, "r2") == "0.4567" and _fmt(-0.25, "r2") == "-0.2500"
    assert _fmt(0.9512, "accuracy") == "95.12%" and _fmt(None, "r2") == "-"


def test_compile_refuses_an_existing_out_before_reading_or_compiling_anything(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedfhe_common.runtime.errors import FedfheError
    from fedfhe_coordinator.fhe.compile import compile_artifact

    (tmp_path / "bundle").mkdir()
    with pytest.raises(FedfheError, match="bundle: already exists; choose another --out or pass --force"):
        compile_artifact(tmp_path / "no-such-artifact", tmp_path / "bundle", signing_key=Ed25519PrivateKey.generate())


def test_compile_command_refuses_an_existing_out_before_opening_the_release_key(tmp_path, capsys):
    """An encrypted release.key prompts for its passphrase: not for a command that then refuses its --out."""
    from fedfhe_coordinator import cli as server_cli

    (tmp_path / "bundle").mkdir()
    assert server_cli.main(["compile", "--artifact", str(tmp_path / "no-artifact"), "--out", str(tmp_path / "bundle"),
                            "--release-key", str(tmp_path / "no-release.key")]) == 1
    assert "bundle: already exists; choose another --out or pass --force" in capsys.readouterr().err
