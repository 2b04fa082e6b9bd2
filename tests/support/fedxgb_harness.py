"""Three data owners and fedfhe's checked FedXgb strategy in one process: Flower's configure_train and
aggregate_train, each owner's tree_training.train_round on a third of the rows, no servers (tests of issue 27)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import xgboost as xgb
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DIABETES, DatasetSchema
from fedfhe_common.ml import fedxgb
from fedfhe_coordinator.serverapp import tree_strategy
from fedfhe_coordinator.serverapp.tree_strategy import booster_record
from fedfhe_owner.clientapp import tree_training

NODES = (11, 12, 13)
BREAST = DatasetSchema(name="breast-cancer", n_features=30, feature_min=0.0, feature_max=5000.0, classes=[0, 1])
WINE = DatasetSchema(name="wine", n_features=13, feature_min=0.0, feature_max=1700.0, classes=[0, 1, 2])
LOADERS = {"breast-cancer": (load_breast_cancer, BREAST), "wine": (load_wine, WINE), "diabetes": (load_diabetes,
                                                                                                 DIABETES)}
Tamper = Callable[[int, int, bytes], bytes]


class Grid:
    """Just what Flower's sampling reads: the connected nodes."""

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def get_nodes(self) -> list[object]:  # rounds.node_owners: no registered keys here, so node-<id>
        return []


def split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DatasetSchema]:
    load, schema = LOADERS[name]
    X, y = load(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0,
                                              stratify=y if schema.is_classifier else None)
    return X_tr, X_te, y_tr, y_te, schema


def reply(raw: bytes, rows: int, to: Message, schema: DatasetSchema,
          metrics: dict[str, int | float] | None = None) -> Message:
    if metrics is None:
        metrics = {name: 0.0 for name in fc.metric_types("train", schema)}
        metrics |= {fc.NUM_EXAMPLES: rows, fc.EVAL_EXAMPLES: 1}
    return Message(RecordDict({fc.ARRAYS: ArrayRecord([np.frombuffer(raw, dtype=np.uint8)]),
                               fc.METRICS: MetricRecord(metrics)}), reply_to=to)


def federate(mode: fedxgb.Mode, X: np.ndarray, y: np.ndarray, schema: DatasetSchema, params: fedxgb.BoostParams,
             rounds: int, max_trees: int, tamper: Tamper | None = None,
             strategy: tree_strategy.BoosterScreen | None = None) -> tree_strategy.BoosterScreen:
    """``rounds`` server rounds of Flower's strategy loop with three owners holding a third of the rows each;
    each owner runs tree_training.train_reply on the instruction and global model it was sent."""
    extra = {"min_train_nodes": 3} if mode == "bagging" else {}
    if strategy is None:
        strategy = tree_strategy.strategy(mode, schema, params, max_trees, min_available_nodes=3, **extra)
    parts = dict(zip(NODES, np.array_split(np.random.default_rng(1).permutation(len(y)), 3), strict=True))
    arrays = booster_record(None)
    for server_round in range(1, rounds + 1):
        config = ConfigRecord(fedxgb.instruction(mode, params, max_trees))
        sent = list(strategy.configure_train(server_round, arrays, config, Grid()))  # type: ignore[attr-defined]
        replies = []
        for m in sent:
            m.metadata.__dict__["_message_id"] = m.object_id  # what the grid's push sets
            node = int(m.metadata.dst_node_id)
            Xp, yp = X[parts[node]], y[parts[node]]
            raw, metrics = tree_training.train_reply(m.content[fc.CONFIG], m.content[fc.ARRAYS],
                                                     (Xp, Xp[:0], yp, yp[:0]), schema)  # scored on its own rows
            raw = tamper(server_round, node, raw) if tamper else raw
            replies.append(reply(raw, len(yp), m, schema, metrics))
        new, _ = strategy.aggregate_train(server_round, replies)  # type: ignore[attr-defined]
        arrays = new if new is not None else arrays
    return strategy


def score(booster: booster_json.Booster, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> float:
    pred = tree_training.predict(booster, X, schema)
    return accuracy_score(y, pred) if schema.is_classifier else r2_score(y, pred)


def centralised(X: np.ndarray, y: np.ndarray, schema: DatasetSchema, params: fedxgb.BoostParams, trees: int
                ) -> booster_json.Booster:
    limits = fedxgb.global_limits(schema, params, trees)
    bst = xgb.train(params.xgb_params(limits), xgb.DMatrix(X, label=y), trees // limits.per_round)
    return booster_json.parse(bytes(bst.save_raw("json")), limits)


class LoopGrid(Grid):
    """A grid whose send_and_receive runs each owner's ClientApp step in process (for Flower's Strategy.start)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> None:
        self.schema = schema
        parts = np.array_split(np.random.default_rng(1).permutation(len(y)), 3)
        self.rows = {node: (X[p], y[p]) for node, p in zip(NODES, parts, strict=True)}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        out = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            X, y = self.rows[int(m.metadata.dst_node_id)]
            split = (X, X[:0], y, y[:0])
            if m.metadata.message_type == MessageType.TRAIN:
                raw, metrics = tree_training.train_reply(m.content[fc.CONFIG], m.content[fc.ARRAYS], split,
                                                         self.schema)
                out.append(reply(raw, len(y), m, self.schema, metrics))
            else:
                metrics = tree_training.evaluate_reply(m.content[fc.CONFIG], m.content[fc.ARRAYS], split, self.schema)
                out.append(Message(RecordDict({fc.METRICS: MetricRecord(metrics)}), reply_to=m))
        return out
