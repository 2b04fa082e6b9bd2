"""Built-in datasets: scikit-learn's digits and diabetes (embedded), Debian's Fashion-MNIST, and the real
tables of ``tabular`` (breast cancer, wine, Palmer penguins: typed schemas, CSV files).

Nothing here downloads: Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` (IDX files under /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedfhe_common.contracts.schema import DIABETES, DIGITS, FASHION_MNIST, DatasetSchema, resolve_schema
from fedfhe_common.ml.data import _load_idx
from fedfhe_common.runtime.errors import DataError

from .tabular import TABULAR, tabular_schema

ARRAYS = ("digits", "fashion-mnist", "diabetes")
BUILTIN = ARRAYS + TABULAR
FASHION_DIR = Path(os.environ.get("FEDFHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def demo_schema(name: str) -> DatasetSchema:
    """The schema of a demo dataset: a built-in one, or a table's reviewed typed schema."""
    return tabular_schema(name) if name in TABULAR else resolve_schema(name)


def is_tabular(name: str) -> bool:
    return name in TABULAR


def load_builtin(name: str, max_rows: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, DatasetSchema]:
    """All labelled rows of a built-in dataset (train and test pooled), optionally subsampled."""
    if name == "digits":
        from sklearn.datasets import load_digits  # lazy: scikit-learn takes ~2 s to import

        d = load_digits()
        X, y, schema = d.data.astype(np.float64), d.target.astype(np.int64), DIGITS
    elif name == "diabetes":  # regression: float targets
        from sklearn.datasets import load_diabetes  # lazy: scikit-learn takes ~2 s to import

        d = load_diabetes()
        X, y, schema = d.data.astype(np.float64), d.target.astype(np.float64), DIABETES
    elif name == "fashion-mnist":
        images = FASHION_DIR / "train-images-idx3-ubyte.gz"
        if not images.exists():
            raise DataError(images, "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist")
        X1, y1 = _load_idx(images, None)
        X2, y2 = _load_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz", None)
        X, y, schema = np.vstack([X1, X2]), np.concatenate([y1, y2]).astype(np.int64), FASHION_MNIST
    else:
        raise DataError(name, f"unknown built-in dataset (known: {', '.join(BUILTIN)})")
    if max_rows is not None and max_rows < len(y):
        idx = np.random.default_rng(seed).permutation(len(y))[:max_rows]
        X, y = X[idx], y[idx]
    return X, y, schema
