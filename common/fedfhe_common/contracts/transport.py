"""Parameters <-> Flower ArrayRecord, with shapes checked against the schema.

A scalar intercept (regressors) travels as a 1-element array; shapes are
checked against the schema (fl_contract.check_params) so a malformed message
cannot reshape the model.
"""

from __future__ import annotations

import numpy as np

from fedfhe_common.contracts.fl_contract import check_params
from fedfhe_common.contracts.schema import DatasetSchema


def to_arrays(params: list[np.ndarray]):
    from flwr.app import ArrayRecord  # lazy: flwr takes ~1 s to import

    return ArrayRecord([np.atleast_1d(np.asarray(p, dtype=np.float64)) for p in params])


def from_arrays(record, family: str, schema: DatasetSchema) -> list[np.ndarray]:
    """The two parameter arrays in model shapes; exact wire shapes and finite values or ValueError."""
    return check_params(record.to_numpy_ndarrays(), family, schema)
