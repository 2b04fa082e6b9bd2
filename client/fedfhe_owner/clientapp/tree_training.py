"""An owner's federated boosting step: check the global booster, boost on the local rows, reply with JSON.

The global model comes from the coordinator, which may be hostile: it is checked
with ``booster_json`` (size, structure, limits derived from the run and the schema)
before XGBoost parses it. Training uses xgboost 1.6.2, the version concrete-ml
1.9.0 pins and every host runs, with base_score fixed at 0.5. The reply is
JSON bytes (never a pickle), in the dialect Flower's FedXgbBagging reads
(``iteration_indptr`` added): bagging replies carry only the new trees, as
Flower's XGBoost example does; cyclic replies carry the whole model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import fedxgb
from fedfhe_common.ml.booster_eval import load, predict, scores  # noqa: F401 - predict: the tests' import
from fedfhe_common.runtime.errors import ConfigError


@dataclass(frozen=True)
class OwnerUpdate:
    """One owner's reply for a round: the booster's JSON bytes and what the reply's metrics need."""

    booster: bytes
    new_trees: int
    rows: int
    seconds: float


def check_global(raw: bytes, schema: DatasetSchema, params: fedxgb.BoostParams, max_trees: int
                 ) -> booster_json.Booster | None:
    """The coordinator's global model, checked; None for round 1's empty model. BoosterRefused names a problem."""
    if len(raw) == 0:
        return None
    return booster_json.parse(raw, fedxgb.global_limits(schema, params, max_trees))


def _labels(y: np.ndarray, schema: DatasetSchema) -> np.ndarray:
    y = np.asarray(y)
    if schema.is_classifier:
        codes = np.asarray(y, dtype=np.int64)
        if not np.array_equal(codes, y) or codes.min(initial=0) < 0 or codes.max(initial=0) >= len(schema.classes):
            raise ConfigError(f"labels must be the class codes 0..{len(schema.classes) - 1} of schema {schema.name!r}")
        return codes.astype(np.float32)
    return y.astype(np.float32)


def train_round(global_raw: bytes, X: np.ndarray, y: np.ndarray, schema: DatasetSchema,
                params: fedxgb.BoostParams, mode: fedxgb.Mode, max_trees: int) -> OwnerUpdate:
    """Boost ``params.local_rounds`` rounds on the owner's (preprocessed) rows, starting from the global model.

    An owner may lack some classes: XGBoost's native API boosts with ``num_class`` from the
    schema regardless (the class's trees then only learn "not this class" here).
    """
    import xgboost as xgb  # lazy: xgboost takes ~4 s to import

    if len(y) == 0 or X.shape != (len(y), schema.n_features):
        raise ConfigError(f"training rows must be (n > 0, {schema.n_features}), got {X.shape}")
    glob = check_global(global_raw, schema, params, max_trees)
    global_trees = glob.n_trees if glob is not None else 0
    reply = fedxgb.reply_limits(schema, params, mode, max_trees, global_trees)
    xgb_params = params.xgb_params(reply)
    started = time.perf_counter()
    dtrain = xgb.DMatrix(np.asarray(X, dtype=np.float32), label=_labels(y, schema), nthread=params.nthread)
    bst = xgb.train(xgb_params, dtrain, num_boost_round=params.local_rounds, xgb_model=load(glob, xgb_params))
    done = bst.num_boosted_rounds()
    if mode == "bagging":
        bst = bst[done - params.local_rounds:done]  # the new trees only (Flower's XGBoost bagging example)
    seconds = time.perf_counter() - started
    # Checked as the coordinator will check it: a mismatch of run and schema fails here, with the reason.
    out = booster_json.parse(bytes(bst.save_raw("json")), reply)
    return OwnerUpdate(out.to_bytes(indptr=True), reply.max_trees - (0 if mode == "bagging" else global_trees),
                       len(y), seconds)


def train_reply(config: Any, record: Any, split: tuple[np.ndarray, ...], schema: DatasetSchema,
                policy: fedxgb.OwnerTreePolicy | None = None) -> tuple[bytes, dict[str, int | float]]:
    """A train message's whole owner step: check the instruction and the global model (ConfigError /
    BoosterRefused), score the global model on the held-out rows, boost on the training rows.

    ``record``: the message's ArrayRecord; ``split``: (X_train, X_test, y_train, y_test) after the run's
    preprocessing; ``policy``: the owner's own bounds. Returns the reply's booster bytes and its metrics
    (fl_contract.metric_types "train").
    """
    mode, params, max_trees = fedxgb.read_instruction(config, policy)
    raw = fedxgb.record_bytes(record, fedxgb.global_limits(schema, params, max_trees).max_bytes)
    booster = check_global(raw, schema, params, max_trees)
    held_out = fc.held_out_metrics(lambda X, y: scores(booster, X, y, schema), split)
    update = train_round(raw, split[0], split[2], schema, params, mode, max_trees)
    return update.booster, held_out | {fc.NUM_EXAMPLES: update.rows, fc.FIT_SECONDS: update.seconds}


def evaluate_reply(config: Any, record: Any, split: tuple[np.ndarray, ...], schema: DatasetSchema,
                   policy: fedxgb.OwnerTreePolicy | None = None) -> dict[str, int | float]:
    """An evaluate message's owner step: the instruction and model checked, scored on the held-out rows;
    the metrics are fl_contract's evaluate metrics (num-examples = the held-out rows)."""
    _, params, max_trees = fedxgb.read_instruction(config, policy)
    raw = fedxgb.record_bytes(record, fedxgb.global_limits(schema, params, max_trees).max_bytes)
    booster = check_global(raw, schema, params, max_trees)
    held_out = fc.held_out_metrics(lambda X, y: scores(booster, X, y, schema), split)
    return held_out | {fc.NUM_EXAMPLES: held_out[fc.EVAL_EXAMPLES]}
