"""The centralised reference: the best model of the federation's family that the pooled rows give.

A ratio "federated / centralised" says something only if the reference is
strong and fair. So the reference is the same family on the same features as the
federation's model (no data-dependent scaling: the federation has none), trained on
the same rows (``training_rows``: every owner's rows minus the ones its ClientApp
holds out to score the global model, which never train it), with its
regularisation chosen on a validation split of those rows from a small grid, then
refitted on all of them, and fitted to convergence.

The solver works on features divided by the schema's declared range
(``(x - feature_min) / (feature_max - feature_min)``, deterministic from the
schema) and the coefficients are mapped back to the raw features: the same
model class on the same inputs, but lbfgs converges on 0-255 pixels where on raw
values it stops far from the optimum (fashion-mnist's old reference). The grid
is in units of that scaled space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.ml.scoring import prediction_score
from fedfhe_owner.clientapp.holdout import split_holdout

# Per family: the regularisation parameter and its grid. A family not listed is fitted once with defaults.
GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    "LogisticRegression": ("C", (0.01, 0.1, 1.0, 10.0)),
    "LinearSVC": ("C", (0.01, 0.1, 1.0, 10.0)),
    "SGDClassifier": ("alpha", (1e-5, 1e-4, 1e-3, 1e-2)),
    "Ridge": ("alpha", (0.01, 0.1, 1.0, 10.0)),
    "Lasso": ("alpha", (1e-4, 1e-3, 1e-2, 1e-1)),
    "ElasticNet": ("alpha", (1e-4, 1e-3, 1e-2, 1e-1)),
}
# Applied where the family takes them. tol 1e-8, not scikit-learn's 1e-4: lbfgs at 1e-4 stops about 0.01
# (in coefficients) short of LogisticRegression's optimum, and on penguins (10 IID owners) one public test row
# sits 0.006 apart in score between two classes, so the unconverged reference scored a row more than the
# optimum itself (federated newton reaches the optimum to 1e-14). Digits: 0.14 s -> 0.37 s.
CONVERGED = {"max_iter": 2000, "warm_start": False, "tol": 1e-8}
VALIDATION_FRACTION = 0.2


def training_rows(parts: list[tuple[np.ndarray, np.ndarray]], holdout_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The owners' rows the federation fits on, pooled: each owner's rows minus its held-out split.

    The same rule as the ClientApp (fedfhe_owner.clientapp.holdout), so the reference sees exactly the rows the
    federated model was trained on; pooling the held-out rows as well would hand the reference 25 % more
    training rows than the federation ever had (bench/results/federated.json has both figures).
    """
    kept = [split_holdout(X, y, holdout_fraction, seed) for X, y in parts]
    return np.vstack([k[0] for k in kept]), np.concatenate([k[2] for k in kept])


@dataclass
class Reference:
    model: Any
    info: dict[str, Any] = field(default_factory=dict)


def _fit(family: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> Any:
    """Fit on range-scaled features, return the model mapped back to raw features.

    A typed schema's rows arrive already preprocessed (standardised): no range scaling then.
    """
    lo, span = (0.0, 1.0) if schema.typed else (schema.feature_min, schema.feature_max - schema.feature_min)
    model = models.build(family, params)
    accepted = model.get_params()
    model.set_params(**{k: v for k, v in CONVERGED.items() if k in accepted and k not in params})
    model.fit((X - lo) / span, y)
    coef = np.asarray(model.coef_, dtype=np.float64) / span
    if lo:  # w.(x - lo)/span + b == (w/span).x + (b - (w/span).lo)
        model.intercept_ = model.intercept_ - coef @ np.full(X.shape[1], lo)
    model.coef_ = coef
    return model


def centralised_reference(family: str, X: np.ndarray, y: np.ndarray, schema: DatasetSchema,
                          seed: int = 0) -> Reference:
    """Choose the regularisation on a validation split of ``X, y``, refit on all of them.

    A typed schema: the same preprocessing as the federation (imputation, one-hot, standardisation),
    its statistics fitted on these pooled rows, in a scikit-learn Pipeline that takes loaded rows.
    """

    if schema.typed:
        from sklearn.pipeline import make_pipeline  # lazy: scikit-learn takes ~2 s to import
        from sklearn.preprocessing import FunctionTransformer  # lazy: scikit-learn takes ~2 s to import

        prep = Preprocessing.local(schema, X)
        inner = _reference(family, prep.transform(X), y, schema, seed)
        inner.info["features"] = ("the schema's preprocessing (gaps filled, categories one-hot, numbers "
                                  "standardised) with statistics of these pooled rows")
        inner.model = make_pipeline(FunctionTransformer(prep.transform), inner.model)
        return inner
    return _reference(family, X, y, schema, seed)


def _reference(family: str, X: np.ndarray, y: np.ndarray, schema: DatasetSchema, seed: int) -> Reference:
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn takes ~2 s to import

    param, grid = GRIDS.get(family, ("", ()))
    info: dict[str, Any] = {
        "family": family,
        "rows": int(len(y)),
        "features": "the federation's (no data-dependent scaling); the solver runs on x scaled by the schema's "
                    f"declared range [{schema.feature_min}, {schema.feature_max}] and the coefficients are "
                    "mapped back, so the model predicts on raw features like the federated one",
        "fit": {k: v for k, v in CONVERGED.items() if k in models.build(family).get_params()},
    }
    chosen: dict[str, Any] = {}
    if grid:
        stratify = y if schema.is_classifier and np.min(np.unique(y, return_counts=True)[1]) >= 2 else None
        X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=VALIDATION_FRACTION, random_state=seed,
                                                      stratify=stratify)
        scores = {value: prediction_score(_fit(family, {param: value}, X_fit, y_fit, schema).predict(X_val),
                                          y_val, schema) for value in grid}
        best = max(grid, key=lambda v: (scores[v], -abs(np.log10(v))))  # ties: the value nearest 1
        chosen = {param: best}
        info |= {"grid": {param: list(grid)}, "validation": f"{VALIDATION_FRACTION:.0%} of the pooled rows"
                 f"{', stratified' if stratify is not None else ''}, seed {seed}",
                 "validation_scores": {str(v): s for v, s in scores.items()}, "chosen": chosen}
    return Reference(_fit(family, chosen, X, y, schema), info)
