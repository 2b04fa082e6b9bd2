"""Loss and accuracy of a parameter set: one definition for server and clients."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import models
from .schema import DatasetSchema


def score_model(model: Any, schema: DatasetSchema, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Classifiers: accuracy and log-loss (hinge loss without probabilities); regressors: MSE and R²."""
    from sklearn import metrics

    if not schema.is_classifier:
        pred = model.predict(X)
        return {"loss": float(metrics.mean_squared_error(y, pred)), "r2": float(metrics.r2_score(y, pred))}
    acc = float(np.mean(model.predict(X) == y))
    if hasattr(model, "predict_proba"):
        try:
            loss = float(metrics.log_loss(y, model.predict_proba(X), labels=schema.classes))
        except (ValueError, AttributeError):
            loss = float("nan")
    else:
        loss = float(metrics.hinge_loss(y, model.decision_function(X), labels=schema.classes))
    return {"loss": loss, "accuracy": acc}


def score_params(
    family: str, model_params: dict[str, Any], params: list[np.ndarray], schema: DatasetSchema,
    X: np.ndarray, y: np.ndarray,
) -> dict[str, float]:
    model = models.set_parameters(models.build(family, model_params), params, schema)
    return score_model(model, schema, X, y)
