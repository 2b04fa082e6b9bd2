"""Parameters <-> Flower ArrayRecord, with shapes checked against the schema.

A scalar intercept (regressors) travels as a 1-element array; shapes are
restored from the schema so a malformed message cannot reshape the model.
"""

from __future__ import annotations

import numpy as np

from . import models
from .schema import DatasetSchema


def to_arrays(params: list[np.ndarray]):
    from flwr.app import ArrayRecord

    return ArrayRecord([np.atleast_1d(np.asarray(p, dtype=np.float64)) for p in params])


def from_arrays(record, family: str, schema: DatasetSchema) -> list[np.ndarray]:
    arrays = record.to_numpy_ndarrays()
    shapes = models.param_shapes(family, schema)
    if len(arrays) != 2:
        raise ValueError(f"expected 2 parameter arrays (coef, intercept), got {len(arrays)}")
    out = []
    for arr, shape in zip(arrays, shapes, strict=True):
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"parameter of {arr.size} values does not fit shape {shape}")
        out.append(np.asarray(arr, dtype=np.float64).reshape(shape))
    return out
