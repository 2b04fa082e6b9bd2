"""The Flower ClientApp: train on the owner's local file, evaluate on its held-out rows.

Flower starts a fresh process per message, so this module keeps its imports
light (no Concrete ML, no torch) and loads the owner's file on each call.
Rows never leave this host: only coef_/intercept_ and metrics are sent back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.contracts.transport import from_arrays, to_arrays
from fedfhe_common.ml import fedxgb, models, newton, secure_target
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.preprocessing import Preprocessing, moments
from fedfhe_common.ml.scoring import score_model
from fedfhe_common.runtime.errors import DataError, IntegrityError
from fedfhe_owner.clientapp import tree_training
from fedfhe_owner.clientapp.holdout import split_holdout
from fedfhe_owner.clientapp.run_ledger import count_evaluation, refuse_replayed_model
from fedfhe_owner.clientapp.secure_client import bound_update, is_secure, legacy_reply, privacy_mod, record_true_update

app = ClientApp()


def _run_schema(context: Context, config: ConfigRecord) -> DatasetSchema:
    """This owner's schema, checked to be the run's exactly; reads no row."""
    node = context.node_config
    where = node.get("data-path", "node-config")
    schema = resolve_schema(str(node.get("schema", "digits")))
    if schema.name != config[fc.SCHEMA_NAME] or schema.n_features != int(config[fc.N_FEATURES]):
        raise DataError(
            where,
            f"this owner's schema {schema.name!r} ({schema.n_features} features) differs from the run's "
            f"{config[fc.SCHEMA_NAME]!r} ({config[fc.N_FEATURES]} features)",
        )
    if fc.SCHEMA_SHA256 in config and str(config[fc.SCHEMA_SHA256]) != fc.schema_sha256(schema):
        raise DataError(where, f"this owner's schema {schema.name!r} is not the run's exactly (columns, "
                               "bounds, categories or classes differ): align the schema files")
    return schema


def _local_data(context: Context, config: ConfigRecord) -> tuple[DatasetSchema, tuple[np.ndarray, ...]]:
    """Load and split this owner's file (fedfhe_owner.clientapp.holdout: seeded, so train and eval agree)."""
    node = context.node_config
    if "data-path" not in node:
        raise DataError("node-config", "no data-path set: start the SuperNode with --node-config 'data-path=\"...\"'")
    schema = _run_schema(context, config)
    labels = str(node["labels-path"]) if node.get("labels-path") else None
    X, y = load_table(str(node["data-path"]), schema, labels)
    return schema, split_holdout(X, y, float(node.get("holdout-fraction", 0.2)), int(node.get("seed", 0)))


def _run_preprocessing(schema: DatasetSchema, config: ConfigRecord) -> Preprocessing:
    """The run's preprocessing, checked against this owner's schema."""
    raw = config.get(fc.PREPROCESSING)
    try:
        return Preprocessing.from_dict(schema, json.loads(str(raw)) if raw else None, "the run's preprocessing")
    except ValueError as exc:
        raise IntegrityError(f"the run's preprocessing is not JSON: {exc}") from None


def _preprocessed(schema: DatasetSchema, split: tuple[np.ndarray, ...], config: ConfigRecord,
                  where: object) -> tuple[np.ndarray, ...]:
    """The run's preprocessing applied to this owner's train and held-out rows."""
    prep = _run_preprocessing(schema, config)
    X_train, X_test, y_train, y_test = split
    return prep.transform(X_train, where), prep.transform(X_test, where), y_train, y_test


def _statistics(schema: DatasetSchema, split: tuple[np.ndarray, ...]) -> tuple[list[np.ndarray], int]:
    """This owner's share of the preprocessing statistics: fractions over its training rows, never a row."""
    return [moments(split[0], schema)], int(len(split[2]))


def _reply(msg: Message, context: Context, arrays: ArrayRecord | None, metrics: dict[str, float]) -> Message:
    """Only the contract's records: the ServerApp knows who this is from the SuperNode's registration."""
    content = RecordDict({fc.METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[fc.ARRAYS] = arrays
    hostile = str(context.node_config.get(fc.TEST_HOSTILE_REPLY, ""))
    if hostile:
        _misbehave(content, hostile)
    return Message(content=content, reply_to=msg)


def _misbehave(content: RecordDict, how: str) -> None:
    """Test federations only (node config ``test-hostile-reply``): send what a hostile owner would.

    ``inflated-weight`` claims 1e12 rows for coefficients x -100 under another
    owner's name (it would decide the FedAvg aggregate); ``nan`` sends NaN
    coefficients. The ServerApp must refuse both.
    """
    metrics = dict(content[fc.METRICS])
    if how == "inflated-weight":
        metrics[fc.NUM_EXAMPLES] = 10**12
        content["owner"] = ConfigRecord({"owner-id": "owner-0"})
    if fc.ARRAYS in content:
        params = [np.array(a) for a in content[fc.ARRAYS].to_numpy_ndarrays()]
        params[0] = params[0] * -100.0 if how == "inflated-weight" else np.full_like(params[0], np.nan)
        content[fc.ARRAYS] = to_arrays(params)
    content[fc.METRICS] = MetricRecord(metrics)


def _run_params(config: ConfigRecord, family: str, rows: int | None = None) -> dict[str, Any]:
    """The run's model parameters; for a fit of ``rows`` rows, with this owner's share of the penalty."""
    params = json.loads(str(config[fc.MODEL_PARAMS]))
    if rows is None or fc.FEDERATION_ROWS not in config:
        return params
    total = config[fc.FEDERATION_ROWS]
    if isinstance(total, bool) or not isinstance(total, int):
        raise IntegrityError(f"the run's {fc.FEDERATION_ROWS} must be an integer, got {type(total).__name__}")
    return models.owner_params(family, params, rows, total)


def _global_model(config: ConfigRecord, received: list[np.ndarray], schema: DatasetSchema,
                  rows: int | None = None) -> tuple[str, Any]:
    """The run's model holding ``received`` (parameters already checked: fl_contract.check_params)."""
    family = str(config[fc.MODEL])
    model = models.build(family, _run_params(config, family, rows))
    return family, models.set_parameters(model, received, schema)


def _model_to_train(context: Context, config: ConfigRecord, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """A train message's global model, checked (fl_contract.check_params), and refused if this owner trained on
    it before in this run (run_ledger.refuse_replayed_model); reads no row."""
    params = fc.check_params(arrays, str(config[fc.MODEL]), _run_schema(context, config))
    refuse_replayed_model(context, params, config)
    return params


def _evaluate(model: Any, schema: DatasetSchema, split: tuple[np.ndarray, ...]) -> dict[str, float]:
    return fc.held_out_metrics(lambda X, y: score_model(model, schema, X, y), split)


def _fit(model: Any, family: str, schema: DatasetSchema, split: tuple[np.ndarray, ...],
         config: ConfigRecord) -> dict[str, float]:
    """Score the incoming global model on held-out rows, then fit it locally; the reply's metrics."""
    metrics = _evaluate(model, schema, split)
    start = time.perf_counter()
    for _ in range(max(1, int(config.get(fc.LOCAL_EPOCHS, 1)))):
        models.local_fit(model, family, split[0], split[2], schema, keep_missing=True)
    return metrics | {fc.NUM_EXAMPLES: int(len(split[2])), fc.FIT_SECONDS: time.perf_counter() - start}


@app.train(mods=[privacy_mod])
def train(msg: Message, context: Context) -> Message:
    """Score the incoming global model on held-out rows, then fit it locally.

    Scoring here rather than in a separate evaluate message halves the
    messages per round: Flower starts one process per message and each
    message waits on the SuperNode's 3 s poll, so that is most of a round.
    In a secure run the message is Flower's legacy FitIns, and the reply the
    FitRes that secaggplus_mod masks (secure_client).
    """
    if is_secure(context):
        return _secure_train(msg, context)
    config = msg.content[fc.CONFIG]
    if str(config.get(fc.PHASE, "")) == fc.PHASE_NEWTON and context.node_config.get(fc.NODE_PLAIN_NEWTON) is False:
        raise fc.InstructionRefused("this owner sends newton's gradient and Hessian only through secure aggregation "
                                    "(owner.yaml privacy.plain_newton: false); the run asked for them in the clear")
    if str(config.get(fc.PHASE, "")) == fc.PHASE_STATISTICS:  # no model: fractions over the training rows
        vectors, rows = _statistics(*_local_data(context, config))
        return _reply(msg, context, ArrayRecord(vectors), {fc.NUM_EXAMPLES: rows})
    if str(config.get(fc.MODEL, "")) in fedxgb.FAMILIES:
        return _boost(msg, context, config)
    count_evaluation(context)  # the incoming global model is scored on the held-out rows below
    received = _model_to_train(context, config, msg.content[fc.ARRAYS].to_numpy_ndarrays())
    schema, split = _local_data(context, config)
    split = _preprocessed(schema, split, config, context.node_config["data-path"])
    family, model = _global_model(config, received, schema, len(split[2]))
    if str(config.get(fc.PHASE, "")) == fc.PHASE_NEWTON:
        terms, metrics = _newton_terms(model, family, schema, split)
        return _reply(msg, context, to_arrays(terms), metrics)
    metrics = _fit(model, family, schema, split, config)
    return _reply(msg, context, to_arrays(models.get_parameters(model, family, schema)), metrics)


def _tree_instruction(context: Context, config: ConfigRecord, record: ArrayRecord
                      ) -> tuple[DatasetSchema, fedxgb.OwnerTreePolicy, bytes]:
    """A boosting message's schema, this owner's tree policy and the global booster's bytes, each checked
    (ConfigError / BoosterRefused naming the fault) before a row is read."""
    schema = _run_schema(context, config)
    fedxgb.check_schema(str(config[fc.MODEL]), schema)
    policy = fedxgb.OwnerTreePolicy.from_node_config(context.node_config)
    _, params, max_trees = fedxgb.read_instruction(config, policy)
    raw = fedxgb.record_bytes(record, fedxgb.global_limits(schema, params, max_trees).max_bytes)
    tree_training.check_global(raw, schema, params, max_trees)
    return schema, policy, raw


def _boost(msg: Message, context: Context, config: ConfigRecord) -> Message:
    """A federated XGBoost round (Flower's FedXgbBagging / FedXgbCyclic): score the global booster on the
    held-out rows, boost on the training rows, reply with the booster's JSON bytes (never a pickle).

    Plain runs only (privacy_mod has already applied require_secure_aggregation): a booster's trees are not
    a vector SecAgg+ could sum. Each global booster is trained on once per run, like a linear model."""
    record = msg.content[fc.ARRAYS]
    schema, policy, raw = _tree_instruction(context, config, record)
    refuse_replayed_model(context, [np.frombuffer(raw, dtype=np.uint8)], config)
    count_evaluation(context)
    split = _preprocessed(schema, _local_data(context, config)[1], config, context.node_config["data-path"])
    booster, metrics = tree_training.train_reply(config, record, split, schema, policy)
    return _reply(msg, context, ArrayRecord([np.frombuffer(booster, dtype=np.uint8)]), metrics)


def _newton_terms(model: Any, family: str, schema: DatasetSchema,
                  split: tuple[np.ndarray, ...]) -> tuple[list[np.ndarray], dict[str, float]]:
    """Aggregation newton: score the global model, then this owner's mean loss, gradient and Hessian at it.

    Averages over the training rows, never a row; the coordinator averages them
    over the owners (weighted by rows) and steps (fedfhe_common.ml.newton).
    """
    newton.check_supported(family, schema)
    metrics = _evaluate(model, schema, split)
    start = time.perf_counter()
    loss, grad, hess = newton.local_terms(family, models.get_parameters(model, family, schema), split[0],
                                          split[2], schema)
    return fc.pack_newton(loss, grad, hess), metrics | {
        fc.NUM_EXAMPLES: int(len(split[2])), fc.FIT_SECONDS: time.perf_counter() - start}


def _secure_train(msg: Message, context: Context) -> Message:
    """The same local step on a FitIns, with the update bounded before Flower masks it.

    The instruction passes the same checks as in a plain run (contract keys,
    parameter shapes and finite values); the reply's num-examples is the weight
    actually used (capped at the run's max_weight).
    """
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = ConfigRecord(dict(fitins.config))
    if str(config.get(fc.MODEL, "")) in fedxgb.FAMILIES:
        raise fc.InstructionRefused("a federated booster is trained in plain runs only: its trees are not a vector "
                                    "SecAgg+ can sum; the run asked for one under secure aggregation")
    if str(config.get(fc.PHASE, "")) == fc.PHASE_STATISTICS:
        # Through SecAgg+ like an update: the coordinator learns only the row-weighted average.
        vectors, rows = _statistics(*_local_data(context, config))
        vectors, weight = bound_update(vectors, rows, context)
        record_true_update(context, str(context.node_config.get("owner-id", "owner")), 0, vectors, weight)
        return legacy_reply(msg, vectors, weight, {fc.NUM_EXAMPLES: weight})
    count_evaluation(context)
    received = _model_to_train(context, config, parameters_to_ndarrays(fitins.parameters))
    schema, split = _local_data(context, config)
    split = _preprocessed(schema, split, config, context.node_config["data-path"])
    newton_phase = str(config.get(fc.PHASE, "")) == fc.PHASE_NEWTON
    try:  # a regressor's parameters travel in units of its target's declared range (secure_target)
        real = received if newton_phase else secure_target.from_wire(schema, received)
    except ValueError as exc:
        raise fc.InstructionRefused(str(exc)) from None
    family, model = _global_model(config, real, schema, len(split[2]))
    if newton_phase:
        # Each array scaled into the clipping range by factors this owner computes itself from the model it
        # received (the coordinator computes the same ones, never sends them), then bounded as any update.
        try:
            scales = newton.term_scales(family, schema, newton.flatten(received, family, schema),
                                        _run_preprocessing(schema, config).largest_input(),
                                        float(context.run_config[fc.RUN_SECAGG_CLIPPING_RANGE]))
        except ValueError as exc:
            raise fc.InstructionRefused(str(exc)) from None
        terms, metrics = _newton_terms(model, family, schema, split)
        params = [t * s for t, s in zip(terms, scales, strict=True)]
    else:
        metrics = _fit(model, family, schema, split, config)
        params = models.get_parameters(model, family, schema)
        params = to_arrays(secure_target.to_wire(schema, params)).to_numpy_ndarrays()
    params, weight = bound_update(params, int(metrics[fc.NUM_EXAMPLES]), context)
    metrics[fc.NUM_EXAMPLES] = weight
    record_true_update(context, str(context.node_config.get("owner-id", "owner")),
                       int(config.get(fc.SERVER_ROUND, 0)), params, weight, metrics)
    # The scores are still in the metrics here: secure_client.seal_scores, the last layer before
    # secaggplus_mod, moves them into the masked vector, so no clear per-owner score leaves.
    return legacy_reply(msg, params, weight, metrics)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the final global model on this owner's held-out rows (plain runs only).

    In a secure run this owner's scores leave it only inside a SecAgg+ sum (secure_client.seal_scores);
    an evaluate message would report them in the clear, one owner at a time, so it is refused before
    anything is counted or read. The honest secure coordinator sends none.
    """
    if is_secure(context):
        raise fc.InstructionRefused(
            "this is a secure run: this owner's held-out scores leave it only inside the SecAgg+ sum of a "
            "train round, never in the clear one owner at a time (issue 25); evaluate messages are refused")
    config = msg.content[fc.CONFIG]
    if str(config.get(fc.MODEL, "")) in fedxgb.FAMILIES:
        schema, policy, _ = _tree_instruction(context, config, msg.content[fc.ARRAYS])
        count_evaluation(context)
        split = _preprocessed(schema, _local_data(context, config)[1], config, context.node_config["data-path"])
        return _reply(msg, context, None, tree_training.evaluate_reply(config, msg.content[fc.ARRAYS], split,
                                                                       schema, policy))
    count_evaluation(context)
    schema, split = _local_data(context, config)
    split = _preprocessed(schema, split, config, context.node_config["data-path"])
    _, model = _global_model(config, from_arrays(msg.content[fc.ARRAYS], str(config[fc.MODEL]), schema), schema)
    metrics = _evaluate(model, schema, split)
    return _reply(msg, context, None, metrics | {fc.NUM_EXAMPLES: metrics[fc.EVAL_EXAMPLES]})
