"""Loss and accuracy of a parameter set: one definition for server and clients."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models


def prediction_score(predictions: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> float:
    """Accuracy for classifiers, R² for regressors: the one number clear, simulated and encrypted are compared by."""
    predictions = np.asarray(predictions).reshape(len(y), -1)[:, 0]
    if schema.is_classifier:
        return float(np.mean(predictions == y))
    from sklearn.metrics import r2_score  # lazy: scikit-learn takes ~2 s to import

    return float(r2_score(y, predictions))


def mean_abs_error(predictions: np.ndarray, y: np.ndarray) -> float:
    """A regressor's error in the target's own unit (beside R², which has none)."""
    return float(np.mean(np.abs(np.asarray(predictions).reshape(len(y), -1)[:, 0] - y)))


def score_model(model: Any, schema: DatasetSchema, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Classifiers: accuracy and log-loss (hinge loss without probabilities); regressors: MSE and R²."""
    from sklearn import metrics  # lazy: scikit-learn takes ~2 s to import

    pred = model.predict(X)
    if not schema.is_classifier:
        return {"loss": float(metrics.mean_squared_error(y, pred)), "r2": prediction_score(pred, y, schema)}
    acc = prediction_score(pred, y, schema)
    if hasattr(model, "predict_proba"):
        try:
            loss = float(metrics.log_loss(y, model.predict_proba(X), labels=schema.label_codes))
        except (ValueError, AttributeError):
            loss = float("nan")
    else:
        loss = float(metrics.hinge_loss(y, model.decision_function(X), labels=schema.label_codes))
    return {"loss": loss, "accuracy": acc}


def score_params(
    family: str, model_params: dict[str, Any], params: list[np.ndarray], schema: DatasetSchema,
    X: np.ndarray, y: np.ndarray,
) -> dict[str, float]:
    model = models.set_parameters(models.build(family, model_params), params, schema)
    return score_model(model, schema, X, y)
