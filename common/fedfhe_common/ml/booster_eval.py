"""A checked booster's predictions and scores, with xgboost 1.6.2 (the version concrete-ml 1.9.0 pins).

Both sides score a global booster: owners on their held-out rows (tree_training),
the coordinator on its public test rows (the ServerApp's round table). The booster
has passed ``booster_json``'s checks; xgboost reads its checked re-serialisation,
never the bytes another host sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts.schema import DatasetSchema


def load(booster: booster_json.Booster | None, params: dict[str, Any]) -> Any:
    """An xgboost.Booster from a checked model (1.6.2 reads the checked re-serialisation, not the received bytes)."""
    import xgboost as xgb  # lazy: xgboost takes ~4 s to import

    if booster is None:
        return None
    out = xgb.Booster(params=params)
    out.load_model(bytearray(booster.to_bytes(indptr=False)))
    return out


def _raw_predictions(booster: booster_json.Booster | None, X: np.ndarray, schema: DatasetSchema) -> np.ndarray:
    """Class probabilities (n, k) or values (n,); round 1's empty model predicts its base_score alone."""
    import xgboost as xgb  # lazy: xgboost takes ~4 s to import

    k = len(schema.classes)
    if booster is None:
        if not schema.is_classifier:
            return np.full(len(X), booster_json.BASE_SCORE)
        return np.full((len(X), k), 1.0 / k)
    out = load(booster, {"nthread": 1}).predict(xgb.DMatrix(np.asarray(X, dtype=np.float32)))
    if schema.is_classifier and out.ndim == 1:
        out = np.column_stack([1.0 - out, out])
    return out


def predict(booster: booster_json.Booster | None, X: np.ndarray, schema: DatasetSchema) -> np.ndarray:
    """Class codes (classifier) or values (regressor) of a checked model, for an owner's held-out scores."""
    out = _raw_predictions(booster, X, schema)
    return out.argmax(axis=1) if schema.is_classifier else out


def scores(booster: booster_json.Booster | None, X: np.ndarray, y: np.ndarray, schema: DatasetSchema
           ) -> dict[str, float]:
    """The scores fl_contract expects (scoring.score_model's): loss and accuracy, or loss (MSE) and R²."""
    from sklearn import metrics  # lazy: scikit-learn takes ~2 s to import

    out = _raw_predictions(booster, X, schema)
    if not schema.is_classifier:
        return {"loss": float(metrics.mean_squared_error(y, out)), "r2": float(metrics.r2_score(y, out))}
    return {"loss": float(metrics.log_loss(y, out, labels=list(range(len(schema.classes))))),
            "accuracy": float(np.mean(out.argmax(axis=1) == y))}
