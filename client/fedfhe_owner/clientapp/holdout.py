"""Which of an owner's rows train and which are held out to score the global model.

One rule for the ClientApp (every round) and for whoever must later score on
exactly those held-out rows (the demo's encrypted predictions), so no row that
trained the model is ever scored.
"""

from __future__ import annotations

import numpy as np

MIN_ROWS_TO_SPLIT = 5  # below this every row trains and nothing is held out


def split_holdout(
    X: np.ndarray, y: np.ndarray, fraction: float, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_held, y_train, y_held): seeded, so every round and every reader agree."""
    if len(y) < MIN_ROWS_TO_SPLIT or fraction <= 0:
        return X, X[:0], y, y[:0]
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn takes ~2 s to import

    X_train, X_held, y_train, y_held = train_test_split(X, y, test_size=fraction, random_state=seed)
    return X_train, X_held, y_train, y_held
