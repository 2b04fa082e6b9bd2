"""The final federated booster as fedfhe's training artifact: the same pickle-free ``xgboost.json`` compile reads.

The run's last global model is checked once more (``booster_json``, the run's
limits), written in xgboost 1.6.2's own dialect (no ``iteration_indptr``), and
passes ``tree_artifact``'s checks as a locally trained XGBoost does. Its first tree
is padded to the run's max_depth (same predictions) so that the circuit, and the
evaluation keys owners upload, follow the configured depth, not the one the trees reached. The
estimator compile builds from it gets ``n_classes_`` and ``classes_`` from the
schema (a booster restored from JSON has neither), and hyper-parameters that say
what the booster holds (``n_estimators`` = boosting rounds, the objective,
base_score 0.5, the only one Concrete ML 1.9 accepts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfhe_common.contracts import booster_json, tree_artifact
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import fedxgb
from fedfhe_common.ml.preprocessing import Preprocessing


def model_params(booster: booster_json.Booster, params: fedxgb.BoostParams, limits: booster_json.Limits
                 ) -> dict[str, Any]:
    """The XGB* estimator parameters that describe the federated booster (models.build accepts each)."""
    return {"n_estimators": booster.rounds, "max_depth": booster.max_depth or 1, "learning_rate": params.eta,
            "objective": limits.objective, "base_score": booster_json.BASE_SCORE}


def to_artifact(raw: bytes, family: str, schema: DatasetSchema, params: fedxgb.BoostParams, max_trees: int, *,
                mode: fedxgb.Mode, rounds: int, metrics: dict[str, Any] | None = None,
                preprocessing: Preprocessing | None = None) -> TrainingArtifact:
    """The training artifact of a federated booster's final global JSON (``origin="federated"``).

    BoosterRefused when the bytes break the run's limits; IntegrityError when the
    artifact's own checks refuse them (both name the problem).
    """
    fedxgb.check_schema(family, schema)
    limits = fedxgb.global_limits(schema, params, max_trees)
    # Compiled at the configured depth, so a retrain with unchanged parameters keeps its key parameters
    # (booster_json.pad_depth: the predictions are unchanged).
    booster = booster_json.pad_depth(booster_json.parse(raw, limits), params.max_depth)
    tree = tree_artifact.from_booster_json(booster.to_bytes(indptr=False), family, schema)
    out = dict(metrics or {})
    out |= {"rounds": rounds, "mode": mode, "tree": tree_artifact.describe(tree),
            "xgboost_params": params.to_dict(), "boosting_rounds": booster.rounds}
    empty = np.zeros(0)
    return TrainingArtifact(family, schema, empty, empty, model_params(booster, params, limits), out,
                            origin="federated", tree=tree, preprocessing=preprocessing)
