"""Every supported family trains, exposes coef_/intercept_ and predicts from set parameters."""

from __future__ import annotations

import numpy as np
import pytest

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_testbed.datasets import load_builtin
from fedfhe_testbed.partition import partition

REG = DatasetSchema(name="reg", n_features=64, feature_min=0, feature_max=16, task="regression")


@pytest.mark.parametrize("family", models.FAMILIES)
def test_family_roundtrip(family):
    X, y, schema = load_builtin("digits")
    if family in models.REGRESSORS:
        schema, y = REG, y.astype(float)
    model = models.build(family)
    models.local_fit(model, family, X, y, schema)
    params = models.get_parameters(model, family, schema)
    clone = models.set_parameters(models.build(family), params, schema)
    assert np.allclose(clone.predict(X), model.predict(X))


def test_warm_start_with_missing_classes_keeps_shape():
    X, y, schema = load_builtin("digits")
    few = np.isin(y, [0, 1, 2])
    start = models.initial_parameters("LogisticRegression", schema)
    model = models.set_parameters(models.build("LogisticRegression"), start, schema)
    models.local_fit(model, "LogisticRegression", X[few], y[few], schema)
    assert model.coef_.shape == (10, 64)


def test_dirichlet_is_skewed_and_covers_all_rows():
    _, y, _ = load_builtin("digits")
    parts = partition(y, 3, "dirichlet", alpha=0.3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    shares = [np.bincount(y[p], minlength=10) / len(p) for p in parts]
    assert max(np.abs(s - 0.1).max() for s in shares) > 0.1  # label skew, unlike IID
    iid = partition(y, 3, "iid", seed=1)
    assert max(abs(len(p) - len(y) / 3) for p in iid) <= 1


def test_diabetes_is_a_bundled_regression_inside_its_declared_bounds():
    from fedfhe_common.contracts.schema import DIABETES, resolve_schema

    X, y, schema = load_builtin("diabetes")
    assert schema is DIABETES is resolve_schema("diabetes") and not schema.is_classifier
    assert X.shape == (442, 10) and y.dtype.kind == "f"
    # The FHE calibration set is drawn from the declared bounds: every real row must lie inside them.
    assert schema.feature_min <= X.min() and X.max() <= schema.feature_max
    shards = partition(y, 3, "dirichlet", alpha=0.5, seed=0)
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(y)))
    medians = [float(np.median(y[s])) for s in shards]
    assert max(medians) - min(medians) > 20  # skewed over the target, not an IID split
