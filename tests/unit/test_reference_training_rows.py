"""The centralised reference trains on exactly the rows the federation trains on (issue 14's fair baseline)."""

from __future__ import annotations

import numpy as np

from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_owner.clientapp.holdout import split_holdout
from fedfhe_testbed.reference import centralised_reference, training_rows


def _owners(n: int = 3, rows: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    # Row i of owner k carries the value 1000*k + i in column 0, so each pooled row names its origin.
    return [(np.column_stack([1000 * k + np.arange(rows), rng.integers(0, 17, (rows, 63))]).astype(float),
             rng.integers(0, 10, rows)) for k in range(n)]


def test_training_rows_are_the_clientapps_training_split_and_never_its_held_out_rows() -> None:
    parts = _owners()
    X, y = training_rows(parts, 0.2, 0)
    pooled_ids = set(X[:, 0].astype(int))
    for k, (Xk, yk) in enumerate(parts):
        X_train, X_held, y_train, _ = split_holdout(Xk, yk, 0.2, 0)
        assert set(X_train[:, 0].astype(int)) <= pooled_ids
        assert not set(X_held[:, 0].astype(int)) & pooled_ids, f"owner {k}'s held-out rows trained the reference"
    assert len(y) == sum(len(split_holdout(Xk, yk, 0.2, 0)[2]) for Xk, yk in parts) == 3 * 32


def test_the_reference_fits_on_those_rows() -> None:
    schema = resolve_schema("digits")
    parts = _owners()
    X, y = training_rows(parts, 0.2, 0)
    X[:, 0] = 0  # the origin marker is not a digits pixel
    ref = centralised_reference("LogisticRegression", X, y, schema)
    assert ref.info["rows"] == len(y) == 96
    assert ref.model.coef_.shape == (10, 64)
