"""The training artifact: round-trips without pickle; any changed byte is refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import IntegrityError
from fedfhe_testbed.datasets import load_builtin


@pytest.fixture
def artifact(tmp_path):
    X, y, schema = load_builtin("digits")
    model = models.build("LogisticRegression", {"max_iter": 200})
    models.local_fit(model, "LogisticRegression", X, y, schema)
    coef, icpt = models.get_parameters(model, "LogisticRegression", schema)
    TrainingArtifact("LogisticRegression", schema, coef, icpt, {"max_iter": 200}, {"rounds": 0}).save(tmp_path / "a")
    return tmp_path / "a", model, X


def test_roundtrip_predicts_the_same(artifact):
    path, model, X = artifact
    loaded = TrainingArtifact.load(path).to_estimator()
    assert np.array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("member", ["params.npz", "model.json", "metrics.json"])
def test_tampered_member_is_refused(artifact, member):
    path = artifact[0] / member
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256 does not match"):
        TrainingArtifact.load(artifact[0])


def test_manifest_path_traversal_is_refused(artifact):
    m = artifact[0] / "manifest.json"
    m.write_text(m.read_text().replace('"metrics.json"', '"../metrics.json"'))
    with pytest.raises(IntegrityError, match="unsafe file"):
        TrainingArtifact.load(artifact[0])
