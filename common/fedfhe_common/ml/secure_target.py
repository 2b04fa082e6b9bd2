"""A regressor's parameters on the SecAgg+ wire: in units of its target's declared range.

SecAgg+ clips every value it sums at +-clipping_range (8 by default) before it
quantises it. A regressor's coefficients are in its target's units (diabetes:
intercept 152, coefficients up to ~800), so a secure FedAvg run clipped them and
ended at R^2 -4.14 where centralised training reaches 0.31. On the wire, both
sides therefore use ``coef / S`` and ``(intercept - M) / S``, with ``M`` and
``S`` the midpoint and half-width of the schema's ``target_min``/``target_max``.

Why this and not a standardised target: the map is affine, and a weighted average
commutes with it, so the unmasked average maps back to exactly the average of the
owners' real models (FedAvgM's step too: it is linear in the averages). Each owner
still fits its own rows in real units with the run's parameters (a Lasso's alpha
means what the user set). Nothing travels: both sides compute ``M`` and ``S``
from the schema the run pinned by hash, so a coordinator cannot pick a scale per
owner. Newton's terms are scaled on their own (``newton.term_scales``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema

NEEDS_BOUNDS = ("under secure aggregation a regressor's parameters travel in units of its target's declared "
                "range (SecAgg+ clips every value at +-clipping_range): declare target_min and target_max in the "
                "schema")


@dataclass(frozen=True)
class SecureTarget:
    """The affine map between a regressor's parameters and what SecAgg+ sums."""

    middle: float
    half_width: float

    @classmethod
    def of(cls, schema: DatasetSchema) -> SecureTarget | None:
        """The map for ``schema`` (None for a classifier); ValueError when a regressor declares no bounds."""
        if schema.is_classifier:
            return None
        if schema.target_min is None or schema.target_max is None:
            raise ValueError(f"schema {schema.name}: {NEEDS_BOUNDS}")
        lo, hi = float(schema.target_min), float(schema.target_max)
        return cls((lo + hi) / 2, (hi - lo) / 2)

    def to_wire(self, params: list[np.ndarray]) -> list[np.ndarray]:
        coef, intercept = params
        return [np.asarray(coef, dtype=np.float64) / self.half_width,
                (np.asarray(intercept, dtype=np.float64) - self.middle) / self.half_width]

    def from_wire(self, params: list[np.ndarray]) -> list[np.ndarray]:
        coef, intercept = params
        return [np.asarray(coef, dtype=np.float64) * self.half_width,
                np.asarray(intercept, dtype=np.float64) * self.half_width + self.middle]


def to_wire(schema: DatasetSchema, params: list[np.ndarray]) -> list[np.ndarray]:
    """A secure FedAvg run's parameters as SecAgg+ carries them (a classifier's unchanged)."""
    target = SecureTarget.of(schema)
    return params if target is None else target.to_wire(params)


def from_wire(schema: DatasetSchema, params: list[np.ndarray]) -> list[np.ndarray]:
    """The real model behind a secure FedAvg run's wire parameters (a classifier's unchanged)."""
    target = SecureTarget.of(schema)
    return params if target is None else target.from_wire(params)
