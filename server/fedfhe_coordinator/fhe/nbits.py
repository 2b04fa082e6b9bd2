"""Choose n_bits: the smallest quantisation that keeps simulated-FHE quality within tolerance of clear.

Fewer bits mean a cheaper circuit; FHE simulation is exact for the compiled
circuit, so it measures what encrypted inference will score, without keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.scoring import prediction_score
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.fhe.concrete_model import calibration_set as default_calibration
from fedfhe_coordinator.fhe.concrete_model import to_concrete
from fedfhe_coordinator.fhe.tune import fhe_latency

DEFAULT_CANDIDATES = tuple(range(2, 13))
DEFAULT_TOLERANCE_POINTS = 0.5


@dataclass(frozen=True)
class NBitsTrial:
    n_bits: int
    simulated: float  # accuracy (classifiers) or R² (regressors), as a fraction
    seconds: float
    fhe_ms_per_row: float | None = None  # real FHE execution per row (choose-n-bits --latency-rows), keygen apart


@dataclass
class NBitsChoice:
    chosen: int | None
    clear: float
    tolerance_points: float
    metric: str
    trials: list[NBitsTrial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen_n_bits": self.chosen,
            "metric": self.metric,
            f"clear_{self.metric}": self.clear,
            "tolerance_points": self.tolerance_points,
            "trials": [
                {"n_bits": t.n_bits, f"fhe_simulated_{self.metric}": t.simulated, "seconds": t.seconds,
                 "fhe_ms_per_row": t.fhe_ms_per_row}
                for t in self.trials
            ],
        }


def within(clear: float, simulated: float, tolerance_points: float) -> bool:
    """Simulated may be better than clear; it may be worse by at most ``tolerance_points`` percent points."""
    return (clear - simulated) * 100.0 <= tolerance_points + 1e-9


def choose_n_bits(
    estimator: Any,
    family: str,
    schema: DatasetSchema,
    X: np.ndarray,
    y: np.ndarray,
    *,
    candidates: Iterable[int] = DEFAULT_CANDIDATES,
    tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
    calibration_set: np.ndarray | None = None,
    on_trial: Callable[[NBitsTrial], None] | None = None,
    latency_rows: int = 0,
) -> NBitsChoice:
    """Try n_bits in ascending order and stop at the first within tolerance (None if none is).

    ``on_trial`` sees each trial as it ends (each compiles a circuit: seconds apiece). With
    ``latency_rows`` > 0 each trial also executes that many rows of ``X`` in real FHE and records
    the milliseconds per row (the accuracy/latency trade-off the federated path can tune).
    """
    calibration = default_calibration(schema, estimator) if calibration_set is None else calibration_set
    clear = prediction_score(estimator.predict(X), y, schema)
    choice = NBitsChoice(None, clear, tolerance_points, "accuracy" if schema.is_classifier else "r2")
    for n_bits in sorted(set(candidates)):
        started = time.perf_counter()
        model = to_concrete(estimator, family, calibration, n_bits)
        simulated = prediction_score(model.predict(X, fhe="simulate"), y, schema)
        seconds = time.perf_counter() - started
        latency = None
        if latency_rows > 0:
            latency = fhe_latency(model, X[:latency_rows])[1]
        choice.trials.append(NBitsTrial(n_bits, simulated, seconds, latency))
        if on_trial is not None:
            on_trial(choice.trials[-1])
        if within(clear, simulated, tolerance_points):
            choice.chosen = n_bits
            break
    return choice


def resolve_n_bits(
    value: int | str, estimator: Any, family: str, schema: DatasetSchema,
    eval_set: tuple[np.ndarray, np.ndarray] | None, *, tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
    calibration_set: np.ndarray | None = None,
    on_trial: Callable[[NBitsTrial], None] | None = None,
    candidates: Iterable[int] | None = None,
) -> tuple[int, NBitsChoice | None]:
    """``--n-bits N`` as given, or ``auto``: the smallest n_bits within tolerance on ``eval_set``."""
    if value != "auto":
        return int(value), None
    if eval_set is None:
        raise ConfigError("--n-bits auto needs --eval FILE (public rows to measure accuracy on)")
    candidates = list(DEFAULT_CANDIDATES if candidates is None else candidates)
    choice = choose_n_bits(estimator, family, schema, *eval_set, tolerance_points=tolerance_points,
                           calibration_set=calibration_set, on_trial=on_trial, candidates=candidates)
    if choice.chosen is None:
        raise ConfigError(f"no n_bits up to {max(candidates)} keeps simulated {choice.metric} within "
                          f"{tolerance_points} points of clear")
    return choice.chosen, choice
