"""Federated Newton: the pooled objective's exact optimum from per-owner gradients and Hessians.

FedAvg averages models each owner fitted to its own rows; under label skew and
small owners that average is not the centralised fit (bench/results/tabular.json:
breast cancer with 3 Dirichlet owners reached 0.945 of the centralised Pipeline).
The families below minimise a sum over rows plus an L2 penalty, so the pooled
objective's gradient and Hessian are row-weighted averages of each owner's: the
coordinator averages them (Flower's FedAvg aggregation, or SecAgg+'s sum), adds
the penalty it knows from the run's parameters and the federation's row count,
and takes one Newton step per round. Ridge and LinearRegression are solved
exactly in one round; LogisticRegression converges in a few (a step that raises
the pooled objective is halved the next round, measured by the owners' losses).
The optimum is scikit-learn's own for the pooled rows (tests/unit/test_newton.py).

Both hosts import this module: owners compute ``local_terms``, the coordinator
steps with ``Stepper``; the reply's wire form and its checks are in fl_contract. Parameters are
laid out as W~ = [coef | intercept] per output row, flattened row-major.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import ConfigError

FAMILIES = ("LogisticRegression", "Ridge", "LinearRegression")
# A reply carries a triangle of P x P numbers: 400 parameters is 80,200 floats (640 kB). Wider models
# (digits: 650, Fashion-MNIST: 7,850) train with FedAvg.
MAX_PARAMS = 400


def n_params(family: str, schema: DatasetSchema) -> int:
    coef_shape, icpt_shape = models.param_shapes(family, schema)
    return int(np.prod(coef_shape)) + int(np.prod(icpt_shape) if icpt_shape else 1)


def unsupported(family: str, schema: DatasetSchema) -> str:
    """Why aggregation ``newton`` cannot train this family on this schema ('' when it can)."""
    if family not in FAMILIES:
        return f"aggregation newton trains {', '.join(FAMILIES)}, not {family}"
    p = n_params(family, schema)
    if p > MAX_PARAMS:
        return (f"aggregation newton sends a {p} x {p} Hessian per owner; schema {schema.name!r} with {family} has "
                f"{p} parameters, above newton's {MAX_PARAMS}: use fedavg")
    return ""


# The estimator parameters newton reproduces, each with the values it honours (None: any value). Anything
# else (class weights, an L1 penalty, no intercept, liblinear's penalised intercept, positive coefficients)
# changes the objective, so such a run trains with fedavg under auto and is refused under newton.
HONOURED: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "LogisticRegression": {"C": None, "max_iter": None, "tol": None, "warm_start": None, "random_state": None,
                           "n_jobs": None, "verbose": None, "penalty": ("l2",), "fit_intercept": (True,),
                           "class_weight": (None,), "multi_class": ("auto", "multinomial", "deprecated"),
                           "solver": ("lbfgs", "newton-cg", "newton-cholesky", "sag", "saga"),
                           "dual": (False,), "l1_ratio": (None,)},
    "Ridge": {"alpha": None, "max_iter": None, "tol": None, "solver": None, "random_state": None, "copy_X": None,
              "fit_intercept": (True,), "positive": (False,)},
    "LinearRegression": {"copy_X": None, "n_jobs": None, "fit_intercept": (True,), "positive": (False,)},
}


def params_reason(family: str, params: dict[str, Any]) -> str:
    """Why newton would not reproduce ``family`` with these estimator parameters ('' when it would)."""
    honoured = HONOURED.get(family, {})
    for key, value in params.items():
        if key not in honoured:
            return f"model_params {key!r}: newton does not reproduce it for {family}"
        allowed = honoured[key]
        if key in ("C", "alpha") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not (value > 0 if key == "C" else value >= 0) or value == float("inf")):
            return f"model_params {key}: {value!r}: must be a finite number {'> 0' if key == 'C' else '>= 0'}"
        if allowed is not None and value not in allowed:
            return f"model_params {key}: {value!r}: newton reproduces {family} with {key} in {list(allowed)} only"
    return ""


def check_supported(family: str, schema: DatasetSchema) -> None:
    reason = unsupported(family, schema)
    if reason:
        raise ConfigError(reason)


def _rows(family: str, schema: DatasetSchema) -> int:
    return models.param_shapes(family, schema)[0][0] if family in models.CLASSIFIERS else 1


def flatten(params: list[np.ndarray], family: str, schema: DatasetSchema) -> np.ndarray:
    """[coef, intercept] in model shapes -> W~ flattened (each output row: its coefficients, then its intercept)."""
    k = _rows(family, schema)
    coef = np.asarray(params[0], dtype=np.float64).reshape(k, schema.n_features)
    icpt = np.asarray(params[1], dtype=np.float64).reshape(k, 1)
    return np.hstack([coef, icpt]).ravel()


def unflatten(w: np.ndarray, family: str, schema: DatasetSchema) -> list[np.ndarray]:
    k = _rows(family, schema)
    wt = np.asarray(w, dtype=np.float64).reshape(k, schema.n_features + 1)
    coef_shape, icpt_shape = models.param_shapes(family, schema)
    return [wt[:, :-1].reshape(coef_shape).copy(), wt[:, -1].reshape(icpt_shape).copy()]


def _augmented(X: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(X, dtype=np.float64), np.ones((len(X), 1))])


def local_terms(family: str, params: list[np.ndarray], X: np.ndarray, y: np.ndarray,
                schema: DatasetSchema) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, mean gradient, mean Hessian) of the data term over these rows, at ``params``; no penalty.

    The losses are scikit-learn's, per row: log-loss (binary or multinomial) for
    LogisticRegression, half the squared error for Ridge and LinearRegression.
    """
    Xa = _augmented(X)
    n, d1 = Xa.shape
    w = flatten(params, family, schema)
    if family != "LogisticRegression":
        r = Xa @ w - np.asarray(y, dtype=np.float64)
        return 0.5 * float(r @ r) / n, Xa.T @ r / n, Xa.T @ Xa / n
    codes = np.asarray(schema.label_codes)
    k = _rows(family, schema)
    if k == 1:  # binary: one row of coefficients scoring the second class
        z = Xa @ w
        t = (np.asarray(y) == codes[1]).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-z))
        loss = float(np.mean(np.logaddexp(0.0, z) - t * z))
        return loss, Xa.T @ (p - t) / n, (Xa * (p * (1.0 - p))[:, None]).T @ Xa / n
    W = w.reshape(k, d1)
    Z = Xa @ W.T
    Z -= Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    T = (np.asarray(y)[:, None] == codes[None, :]).astype(np.float64)
    loss = float(np.mean(-np.sum(T * np.log(np.clip(P, 1e-300, None)), axis=1)))
    grad = ((P - T).T @ Xa / n).ravel()
    # H[(a,i),(b,j)] = mean over rows of (P_a [a == b] - P_a P_b) x_i x_j
    S = np.einsum("na,ab->nab", P, np.eye(k)) - np.einsum("na,nb->nab", P, P)
    H = np.einsum("nab,ni,nj->aibj", S, Xa, Xa, optimize=True).reshape(k * d1, k * d1) / n
    return loss, grad, H


def term_bounds(family: str, schema: DatasetSchema, w: np.ndarray, input_bound: float,
                target_limit: float = 0.0) -> tuple[float, float, float]:
    """Bounds on |each entry| of an honest owner's gradient, Hessian and loss at ``w``, rows within bounds.

    Secure aggregation quantises each array within a clipping range: the coordinator
    scales each array by range / bound so that nothing an honest owner sends is
    clipped and each keeps its own precision. ``input_bound``: the largest |model
    input| the preprocessing lets through; ``target_limit``: a regressor's |target|.
    """
    b = max(1.0, float(input_bound))  # the intercept's input is 1
    rows = np.asarray(w, dtype=np.float64).reshape(-1, schema.n_features + 1)
    z = float(np.max(np.sum(np.abs(rows), axis=1))) * b  # the largest |score| a row can get
    if family == "LogisticRegression":
        # |p - t| <= 1; p(1 - p) and p_a p_b <= 1/4; log-loss <= 2 max|z| + log k
        return b, 0.25 * b * b, 2.0 * z + float(np.log(max(2, rows.shape[0])))
    r = z + float(target_limit)
    return b * r, b * b, 0.5 * r * r


def target_bound(schema: DatasetSchema) -> float:
    """The largest |target| a regressor's schema allows (0 for classifiers); ValueError without bounds."""
    if schema.is_classifier:
        return 0.0
    if schema.target_min is None or schema.target_max is None:
        raise ValueError(f"schema {schema.name}: a secure newton run needs target_min and target_max")
    return max(abs(float(schema.target_min)), abs(float(schema.target_max)))


def term_scales(family: str, schema: DatasetSchema, w: np.ndarray, input_bound: float,
                clipping_range: float) -> list[float]:
    """The factors that bring an honest owner's gradient, Hessian and loss into SecAgg+'s clipping range.

    Both sides compute them from what both hold (the model the round sent, the run's
    preprocessing, the schema and the run config), so no factor travels: a
    coordinator that could choose one per owner could shrink every other owner's
    terms to nothing and read one owner's out of the sum.
    """
    bounds = term_bounds(family, schema, w, input_bound, target_bound(schema))
    return [clipping_range / b for b in bounds]


def penalty_strength(family: str, model_params: dict[str, Any], federation_rows: int) -> float:
    """λ of the pooled objective on the mean scale, (λ/2)·||coef||²; the intercept is never penalised.

    scikit-learn: LogisticRegression minimises C·Σ loss + ½||coef||², i.e. mean loss + ||coef||²/(2CN);
    Ridge Σ (residual²) + α||coef||², i.e. mean ½ residual² + α/(2N)·||coef||².
    """
    merged = {**models.default_params(family), **model_params}
    if family == "LogisticRegression":
        return 1.0 / (float(merged.get("C", 1.0)) * federation_rows)
    if family == "Ridge":
        return float(merged.get("alpha", 1.0)) / federation_rows
    return 0.0


class NotConvex(ValueError):
    """The averaged Hessian is not a convex loss's: some owner sent terms no honest owner computes."""


@dataclass
class Stepper:
    """The coordinator's side: one Newton step per round, halved back when the pooled objective rose.

    ``step(w, loss, grad, hess, strength)`` takes the averaged terms measured at
    ``w`` (the model the round sent) and the round's penalty strength
    (``penalty_strength`` over the rows that answered), and returns the model for
    the next round.
    """

    n_features: int
    accepted: np.ndarray | None = None
    accepted_objective: float = float("inf")
    direction: np.ndarray | None = None
    log: list[dict[str, Any]] = field(default_factory=list)

    def penalised(self, w: np.ndarray, loss: float, grad: np.ndarray, hess: np.ndarray,
                  strength: float) -> tuple[float, np.ndarray, np.ndarray]:
        """The pooled objective's value, gradient and Hessian: the data terms plus the L2 penalty."""
        mask = np.ones_like(w)
        mask.reshape(-1, self.n_features + 1)[:, -1] = 0.0  # intercepts
        objective = loss + 0.5 * strength * float(np.sum((w * mask) ** 2))
        return objective, grad + strength * w * mask, hess + np.diag(strength * mask)

    def step(self, w: np.ndarray, loss: float, grad: np.ndarray, hess: np.ndarray, strength: float,
             hess_tolerance: float = 0.0, loss_tolerance: float = 0.0) -> np.ndarray:
        """The tolerances are what rounding alone can do (secure aggregation quantises the terms): how far
        below 0 the averaged Hessian's eigenvalues may fall (taken as 0), and how much the loss may seem
        to rise without having risen."""
        values, vectors = np.linalg.eigh(0.5 * (hess + hess.T))
        scale = max(1.0, float(np.max(np.abs(np.diag(hess)))))
        if values[0] < -(1e-8 * scale + hess_tolerance):
            raise NotConvex(f"the averaged Hessian has a negative eigenvalue ({values[0]:.3g}): no convex loss has "
                            "one")
        hess = (vectors * np.clip(values, 0.0, None)) @ vectors.T
        objective, g, h = self.penalised(w, loss, grad, hess, strength)
        rose = objective > self.accepted_objective + loss_tolerance + 1e-12 * max(1.0, abs(self.accepted_objective))
        if self.accepted is not None and self.direction is not None and rose:
            self.direction = self.direction * 0.5  # the full step overshot: go half as far from the last good model
            self.log.append({"objective": objective, "accepted": False})
            return self.accepted + self.direction
        self.accepted, self.accepted_objective = w, objective
        # Directions the objective is flat along move nothing: a multinomial model's intercepts shifted
        # together (known: projected out), collinear columns under LinearRegression (no penalty holds them:
        # cut at the rounding's tolerance). Solving there would divide rounding noise by (almost) zero, so the
        # step is taken on the rest only, as scikit-learn's, which starts at 0 and never moves along them.
        rows = len(w) // (self.n_features + 1)
        if rows > 1:
            shift = np.zeros(len(w))
            shift.reshape(rows, -1)[:, -1] = 1.0 / np.sqrt(rows)
            keep_out = np.eye(len(w)) - np.outer(shift, shift)
            g, h = keep_out @ g, keep_out @ h @ keep_out
        values, vectors = np.linalg.eigh(h)
        floor = 1e-10 * max(1.0, float(np.max(np.abs(values)))) + (hess_tolerance if strength == 0 else 0.0)
        keep = values > floor
        basis = vectors[:, keep]
        self.direction = -basis @ ((basis.T @ g) / values[keep])
        self.log.append({"objective": objective, "accepted": True, "gradient_norm": float(np.linalg.norm(g))})
        return w + self.direction
