"""The local path for a tree, as an operator runs it: a regression tree trained on a CSV by
`fedfhe-coordinator train-local`, compiled by `fedfhe-coordinator compile` into a signed bundle, published on
the running inference node, and predicted on encrypted rows equal to Concrete ML's simulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.manifest import verify_manifest
from fedfhe_common.ml.data import save_csv
from fedfhe_common.pki.ca import issue
from fedfhe_common.pki.release import load_verify_key
from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.bundles import publish_bundle
from fedfhe_owner.predict.encrypted import predict_rows
from fedfhe_owner.predict.inference_client import InferenceClient
from fedfhe_testbed.datasets import load_builtin

pytestmark = pytest.mark.timeout(600)
ROWS = 3  # each row is one FHE run of a few seconds on this machine


def server_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The coordinator's console script, started as an operator starts it."""
    exe = Path(sys.executable).with_name("fedfhe-coordinator")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_local_tree_from_csv_to_encrypted_predictions(tmp_path, node, pki):
    X, y, schema = load_builtin("diabetes")
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:350], order[350:]
    save_csv(tmp_path / "train.csv", X[train], y[train], schema)
    save_csv(tmp_path / "test.csv", X[test], y[test], schema)
    key = ["--release-key", str(pki / "release.key")]

    art = tmp_path / "artifact"
    run = server_cli("train-local", "--data", str(tmp_path / "train.csv"), "--schema", "diabetes",
                     "--model", "DecisionTreeRegressor", "--model-params", '{"max_depth": 3}',
                     "--eval", str(tmp_path / "test.csv"), "--out", str(art), *key)
    assert run.returncode == 0, run.stderr
    assert "DecisionTreeRegressor" in run.stdout
    assert sorted(p.name for p in art.iterdir()) == ["manifest.json", "manifest.sig", "metrics.json", "model.json",
                                                     "trees.npz"]  # node arrays, no pickle

    bundle = tmp_path / "bundle"
    run = server_cli("compile", "--artifact", str(art), "--out", str(bundle), "--model-id", "diabetes-tree",
                     "--model-version", "1", "--eval", str(tmp_path / "test.csv"), *key)
    assert run.returncode == 0, run.stderr
    meta = verify_manifest(bundle, "fedfhe-fhe-bundle")
    assert meta["family"] == "DecisionTreeRegressor" and meta["n_bits"] == 6  # the trees' default
    assert meta["model_class"] == "DecisionTreeRegressor" and meta["tree"]["max_depth"] == 3
    assert meta["source"]["origin"] == "local"

    publish_bundle(bundle, node.bundles_dir, load_verify_key(pki / "release.pub"))
    node.signal(signal.SIGHUP)
    # An owner of its own: the shared node caps key sets per owner (4), and carol's are counted by other modules.
    issue(pki, "tree-owner", client=True)
    endpoint = node.endpoint("tree-owner")
    with InferenceClient(endpoint) as client:
        wait_until(lambda: bool(client.list_models("diabetes-tree")), 60, "the tree bundle to be served")
    rows = X[test][:ROWS]
    result = predict_rows(endpoint, tmp_path / "tree-owner", rows, model_id="diabetes-tree", version="1",
                          progress=False)

    # Concrete ML's simulation of the same circuit: the artifact through the same conversion compile used.
    from fedfhe_coordinator.fhe.concrete_model import calibration_set, to_concrete

    artifact = TrainingArtifact.load(art, load_verify_key(pki / "release.pub"))
    estimator = artifact.to_estimator()
    fhe_model = to_concrete(estimator, artifact.family, calibration_set(schema, estimator), 6)
    simulated = fhe_model.predict(rows, fhe="simulate")
    np.testing.assert_allclose(result.predictions, simulated, rtol=0, atol=1e-9)
    assert result.keys_uploaded and result.bytes["evaluation_keys"] > 4 << 20  # streamed, above gRPC's 4 MB
    print(json.dumps({"evaluation_keys": result.bytes["evaluation_keys"], "seconds": result.seconds}))
