"""`fedfhe-coordinator tune`: the local path's accuracy-vs-FHE-latency search ("train locally, deploy securely").

scikit-learn's GridSearchCV scores the family's hyper-parameters in the clear
(cross-validated on the training rows); every grid point is then refitted on all
training rows and crossed with each ``n_bits``: compiled with Concrete ML on the
schema's calibration rows, scored on the public evaluation rows in simulated FHE,
and timed executing real FHE on a few rows (after key generation, which is
one-off per owner and reported apart). The frontier is the candidates no other
beats on both simulated score and latency; the pick is the fastest candidate whose
simulated score is within ``tolerance_points`` of the best simulated score.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.ml.scoring import prediction_score
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.fhe.concrete_model import calibration_set, to_concrete


@dataclass
class Candidate:
    params: dict[str, Any]
    n_bits: int
    cv_score: float  # GridSearchCV's mean cross-validated score in the clear (the family's own .score)
    clear: float  # refitted on all training rows, scored on the evaluation rows
    simulated: float  # the same rows through the compiled circuit, simulated
    fhe_ms_per_row: float  # real FHE execution (encrypt + run + decrypt) per row
    keygen_s: float
    compile_s: float
    frontier: bool = False


@dataclass
class TuneResult:
    family: str
    metric: str
    tolerance_points: float
    latency_rows: int
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family, "metric": self.metric, "tolerance_points": self.tolerance_points,
            "latency_rows": self.latency_rows,
            "candidates": [asdict(c) for c in self.candidates],
            "frontier": [asdict(c) for c in self.candidates if c.frontier],
            "chosen": asdict(self.chosen) if self.chosen else None,
        }


def mark_frontier(candidates: list[Candidate]) -> None:
    """Pareto frontier on (higher simulated score, lower FHE latency)."""
    for c in candidates:
        c.frontier = not any(
            o is not c and o.simulated >= c.simulated and o.fhe_ms_per_row <= c.fhe_ms_per_row
            and (o.simulated > c.simulated or o.fhe_ms_per_row < c.fhe_ms_per_row)
            for o in candidates
        )


def pick(candidates: list[Candidate], tolerance_points: float) -> Candidate | None:
    """The fastest candidate whose simulated score is within ``tolerance_points`` (percent points) of the best."""
    if not candidates:
        return None
    best = max(c.simulated for c in candidates)
    ok = [c for c in candidates if (best - c.simulated) * 100.0 <= tolerance_points + 1e-9]
    return min(ok, key=lambda c: (c.fhe_ms_per_row, -c.simulated, c.n_bits))


def fhe_latency(model: Any, X: np.ndarray) -> tuple[float, float]:
    """(key generation seconds, milliseconds per row executing real FHE on ``X`` one row at a time)."""
    started = time.perf_counter()
    model.fhe_circuit.keygen(force=False)
    keygen = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(len(X)):
        model.predict(X[i:i + 1], fhe="execute")
    return keygen, 1000.0 * (time.perf_counter() - started) / max(1, len(X))


def tune(
    X: np.ndarray, y: np.ndarray, schema: DatasetSchema, family: str, grid: dict[str, list[Any]],
    n_bits: list[int], X_eval: np.ndarray, y_eval: np.ndarray, *, cv: int = 3, tolerance_points: float = 0.5,
    latency_rows: int = 3, progress: Callable[[str], None] | None = None, prep: Any = None,
) -> TuneResult:
    """GridSearchCV over ``grid`` crossed with ``n_bits``; every candidate scored and timed (see module doc)."""
    from sklearn.base import clone  # lazy: scikit-learn takes ~2 s to import
    from sklearn.exceptions import ConvergenceWarning  # lazy: scikit-learn takes ~2 s to import
    from sklearn.model_selection import GridSearchCV  # lazy: scikit-learn takes ~2 s to import


    say = progress or (lambda _line: None)
    models.check_family(family, schema, local=True)
    if not n_bits or any(not 1 <= b <= 16 for b in n_bits):
        raise ConfigError(f"n_bits: expected values in 1..16, got {n_bits}")
    if latency_rows < 1:
        raise ConfigError(f"--latency-rows must be >= 1, got {latency_rows}")
    base = models.build(family)
    unknown = sorted(set(grid) - set(base.get_params()))
    if unknown:
        raise ConfigError(f"--grid: {', '.join(unknown)} not a parameter of {family}")
    search = GridSearchCV(base, {k: list(v) for k, v in grid.items()}, cv=cv, refit=False, n_jobs=1,
                          error_score="raise")
    say(f"GridSearchCV: {len(_points(grid))} parameter set(s) x {cv} folds in the clear")
    with warnings.catch_warnings(record=True) as caught:
        # lbfgs' "failed to converge" for every fold and grid point would bury the table: counted, said once
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            search.fit(X, y)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--grid: {family} cannot fit with it: {exc}") from None
        refits = [clone(base).set_params(**params).fit(X, y) for params in search.cv_results_["params"]]
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        say(f"{unconverged} fit(s) stopped at max_iter before converging (scikit-learn's ConvergenceWarning); "
            "raise max_iter in --grid if the scores matter")
    metric = "accuracy" if schema.is_classifier else "r2"
    result = TuneResult(family, metric, tolerance_points, latency_rows)
    timed = X_eval[:latency_rows]
    for params, cv_score, estimator in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                                           refits, strict=True):
        clear = prediction_score(estimator.predict(X_eval), y_eval, schema)
        calibration = calibration_set(schema, estimator, prep=prep)
        for bits in sorted(set(n_bits)):
            started = time.perf_counter()
            model = to_concrete(estimator, family, calibration, bits)
            compile_s = time.perf_counter() - started
            simulated = prediction_score(model.predict(X_eval, fhe="simulate"), y_eval, schema)
            keygen_s, ms = fhe_latency(model, timed)
            result.candidates.append(Candidate(dict(params), bits, float(cv_score), clear, simulated, ms,
                                               keygen_s, compile_s))
            say(f"{params} n_bits {bits}: clear {clear:.4f}, simulated {simulated:.4f}, FHE {ms:.1f} ms/row "
                f"(compile {compile_s:.1f} s, keygen {keygen_s:.1f} s)")
    mark_frontier(result.candidates)
    result.chosen = pick(result.candidates, tolerance_points)
    return result


def _points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    from sklearn.model_selection import ParameterGrid  # lazy: scikit-learn takes ~2 s to import

    return list(ParameterGrid({k: list(v) for k, v in grid.items()}))
