"""An owner's federated fit under label skew (issue 14): classes it has no rows of keep the global parameters."""

from __future__ import annotations

import numpy as np

from fedfhe_common.ml import models
from fedfhe_testbed.datasets import load_builtin

FAMILY = "LogisticRegression"


def global_model():
    X, y, schema = load_builtin("digits")
    start = models.build(FAMILY)
    models.local_fit(start, FAMILY, X, y, schema)
    return X, y, schema, models.get_parameters(start, FAMILY, schema)


def owner_fit(X, y, schema, params, keep_missing: bool):
    model = models.set_parameters(models.build(FAMILY), [p.copy() for p in params], schema)
    models.local_fit(model, FAMILY, X, y, schema, keep_missing=keep_missing)
    return model, models.get_parameters(model, FAMILY, schema)


def test_missing_classes_keep_the_global_rows_and_present_ones_train():
    X, y, schema, params = global_model()
    few = np.isin(y, [0, 1, 2, 3, 4])
    model, (coef, icpt) = owner_fit(X[few], y[few], schema, params, keep_missing=True)
    assert coef.shape == (10, 64) and list(model.classes_) == list(schema.classes)
    assert np.array_equal(coef[5:], params[0][5:]) and np.array_equal(icpt[5:], params[1][5:])
    assert not np.allclose(coef[:5], params[0][:5])  # the present classes did train
    # The placeholder-row fit (train-local, or keep_missing off) moves the absent classes too.
    _, (placeholder, _) = owner_fit(X[few], y[few], schema, params, keep_missing=False)
    assert not np.allclose(placeholder[5:], params[0][5:])


def test_fewer_than_three_present_classes_fall_back_to_the_placeholder_fit():
    X, y, schema, params = global_model()
    two = np.isin(y, [3, 7])  # sklearn fits two classes as one binary row: no per-class rows to keep
    model, (coef, _) = owner_fit(X[two], y[two], schema, params, keep_missing=True)
    assert coef.shape == (10, 64) and list(model.classes_) == list(schema.classes)
    assert set(model.predict(X[two])) <= {3, 7}
