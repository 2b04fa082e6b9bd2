"""Split one labelled table into per-owner shards: IID or non-IID (Dirichlet over labels, or over a
regression target's quartiles)."""

from __future__ import annotations

import numpy as np


def split_holdout(X: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """A stratified public test set (for server-side evaluation) and the rest."""
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn takes ~2 s to import

    stratify = y if np.issubdtype(y.dtype, np.integer) else None
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=fraction, random_state=seed, stratify=stratify
    )
    return X_rest, y_rest, X_test, y_test


def iid_indices(n_rows: int, owners: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(part) for part in np.array_split(perm, owners)]


def dirichlet_indices(
    y: np.ndarray, owners: int, alpha: float, seed: int, min_rows: int = 10
) -> list[np.ndarray]:
    """Label-skewed shards: each class is spread over owners by Dirichlet(alpha) weights.

    Smaller alpha means more skew. Draws again (bounded) until every owner has
    ``min_rows`` rows, so no owner ends up with an unusable shard.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(100):
        shards: list[list[int]] = [[] for _ in range(owners)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            weights = rng.dirichlet(np.full(owners, alpha))
            cuts = (np.cumsum(weights)[:-1] * len(idx)).astype(int)
            for owner, part in enumerate(np.split(idx, cuts)):
                shards[owner].extend(part.tolist())
        if min(len(s) for s in shards) >= min_rows:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"could not draw {owners} Dirichlet shards of >= {min_rows} rows with alpha={alpha}")


def partition(
    y: np.ndarray, owners: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
    """Row indices per owner."""
    if owners < 1:
        raise ValueError("owners must be >= 1")
    if scheme == "iid":
        return iid_indices(len(y), owners, seed)
    if scheme in ("dirichlet", "non-iid"):
        if not np.issubdtype(y.dtype, np.integer):  # a regression target: skew over its quartiles instead
            y = np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75]))
        return dirichlet_indices(y, owners, alpha, seed)
    raise ValueError(f"unknown partition scheme {scheme!r} (iid, dirichlet)")
