"""The held-out rule: one function for the ClientApp and for whoever scores on the held-out rows."""

from __future__ import annotations

import numpy as np

from fedfhe_owner.clientapp.holdout import split_holdout


def test_a_small_file_trains_on_every_row_and_holds_none_out():
    X, y = np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1])
    X_train, X_held, y_train, y_held = split_holdout(X, y, 0.2, 0)
    assert X_train.shape == (4, 2) and y_train.tolist() == [0, 1, 0, 1]
    assert X_held.shape == (0, 2) and y_held.shape == (0,)


def test_the_split_is_seeded_disjoint_and_keeps_rows_with_their_labels():
    X = np.arange(200.0).reshape(100, 2)
    y = np.arange(100) % 3
    a, b = split_holdout(X, y, 0.2, 7), split_holdout(X, y, 0.2, 7)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    X_train, X_held, y_train, y_held = a
    assert len(y_held) == 20 and len(y_train) == 80
    assert not set(X_held[:, 0]) & set(X_train[:, 0])
    assert np.array_equal((X_held[:, 0] // 2).astype(int) % 3, y_held)
    assert not np.array_equal(split_holdout(X, y, 0.2, 8)[1], X_held)
    assert split_holdout(X, y, 0.0, 7)[1].shape == (0, 2)
