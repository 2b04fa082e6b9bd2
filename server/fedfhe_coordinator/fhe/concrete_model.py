"""A fitted scikit-learn model's Concrete ML twin, and the calibration rows it is compiled on.

One home for what compile, choose-n-bits and tune all build on; apart from compile so that compile
can import nbits at module level without an import cycle (issue 28).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.runtime.errors import ConfigError

CALIBRATION_ROWS = 200


def calibration_set(schema: DatasetSchema, estimator: Any = None, rows: int = CALIBRATION_ROWS,
                    seed: int = 0, prep: Preprocessing | None = None) -> np.ndarray:
    """Uniform rows inside the declared bounds, plus, for a linear model, the corners of the bounds box.

    Per column: Concrete ML quantises each input on its own calibration range, so every
    column spans its own declared bounds after the preprocessing (``prep``: standardised
    numbers, 0/1 for booleans and one-hot categories). One range for every column gave
    a column living in 0.05-0.16 one or two of 256 levels (wine: 14.8 points lost in FHE).

    Concrete sizes every integer in the circuit from the calibration rows. Uniform
    rows average out and under-estimate the dot products that real rows reach
    (measured on digits: real images then wrapped around in FHE, 2 of 397
    predictions wrong at any n_bits). The corners where each output is largest
    and smallest make the widths cover every row the schema allows. Both come
    from the declared bounds only, never from anyone's data.
    """
    prep = prep or Preprocessing.identity(schema)
    uniform = prep.calibration_set(rows, seed) if schema.typed else schema.calibration_set(rows, seed)
    lo, hi = (np.atleast_2d(b) for b in prep.calibration_bounds())
    coef = getattr(estimator, "coef_", None)
    if coef is None:
        # A tree quantises each input over the calibration rows' range: make it exactly the declared bounds.
        return np.vstack([uniform, lo, hi])
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    corners = [np.where(coef > 0, hi, lo), np.where(coef > 0, lo, hi), lo, hi]
    return np.vstack([uniform, *corners])


def concrete_class(family: str) -> type:
    """The Concrete ML class of a scikit-learn family (same name in concrete.ml.sklearn)."""
    import concrete.ml.sklearn as cml  # lazy: concrete-ml takes seconds to import

    cls = getattr(cml, family, None)
    if cls is None or not hasattr(cls, "from_sklearn_model"):
        raise ConfigError(f"model {family!r}: Concrete ML has no from_sklearn_model for it")
    return cls


def to_concrete(estimator: Any, family: str, calibration: np.ndarray, n_bits: int) -> Any:
    """from_sklearn_model + compile: the FHE twin of a fitted scikit-learn estimator."""
    model = concrete_class(family).from_sklearn_model(estimator, calibration, n_bits=n_bits)
    model.compile(calibration)
    return model
