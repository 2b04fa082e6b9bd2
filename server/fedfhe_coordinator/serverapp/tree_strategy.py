"""Flower's FedXgbBagging / FedXgbCyclic with every owner's booster checked before it is aggregated.

A data owner is trusted with its rows, not with the bytes it replies: a booster
that breaks the run's limits (too many trees, too deep, a feature index out of
range, a cycle, NaN or huge leaves, another objective, oversized JSON), or a
cyclic reply that rewrites the trees it was given, is that owner's failure for
the round with the reason (``refusals``), and the other replies are aggregated.
Each reply is checked with ``json`` alone (``booster_json``) before Flower or
XGBoost parse it. Bagging appends every valid reply's trees with their classes
(``booster_json.append_trees``), which Flower's own ``aggregate_bagging`` does only
for one local round of a binary or regression model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedXgbBagging, FedXgbCyclic

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import fedxgb
from fedfhe_common.ml.fedxgb import TreeBudget  # noqa: F401 - where the tests and the ServerApp import it
from fedfhe_common.runtime.errors import ConfigError


@dataclass(frozen=True)
class Refusal:
    """An owner's reply left out of a round's aggregate, and why (for the round table)."""

    server_round: int
    node_id: int
    reason: str


class BoosterScreen:
    """Mixed into a FedXgb strategy: checks each reply's booster and metrics; refused replies never aggregate."""

    def __init__(self, schema: DatasetSchema, params: fedxgb.BoostParams, max_trees: int,
                 max_rows: int = fc.DEFAULT_MAX_EXAMPLES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schema, self.params, self.max_trees, self.max_rows = schema, params, max_trees, max_rows
        self.refusals: list[Refusal] = []
        self.global_model: booster_json.Booster | None = None  # what configure_train last sent

    def reply_limits(self) -> booster_json.Limits:
        raise NotImplementedError

    def check_content(self, content: RecordDict) -> tuple[booster_json.Booster, dict[str, Any]]:
        """A reply's booster (checked) and metrics (fl_contract's train metrics); BoosterRefused names a fault."""
        limits = self.reply_limits()
        if set(content.keys()) != {fc.ARRAYS, fc.METRICS} or fc.METRICS not in content.metric_records or \
                fc.ARRAYS not in content.array_records:
            raise booster_json.BoosterRefused(f"a reply holds exactly {fc.ARRAYS!r} and {fc.METRICS!r}")
        try:
            metrics = fc.check_metrics(dict(content.metric_records[fc.METRICS]), "train", self.schema, self.max_rows)
        except fc.ReplyRejected as exc:
            raise booster_json.BoosterRefused(str(exc)) from None
        return booster_json.parse(fedxgb.record_bytes(content.array_records[fc.ARRAYS], limits.max_bytes),
                                  limits), metrics

    def screen_boosters(self, server_round: int, replies: Iterable[Message]
                        ) -> list[tuple[Message, booster_json.Booster]]:
        """The replies that pass, each with its checked booster; the others go to ``refusals``."""
        kept = []
        for msg in replies:
            if msg.has_error():
                continue  # Flower logs it; the caller's round table records error replies
            node = int(msg.metadata.src_node_id)
            try:
                booster, metrics = self.check_content(msg.content)
            except booster_json.BoosterRefused as exc:
                self.refusals.append(Refusal(server_round, node, fc.owner_text(f"booster refused: {exc}")))
                continue
            except Exception as exc:  # noqa: BLE001 - any malformed record is that owner's failure
                reason = f"malformed reply: {type(exc).__name__}: {str(exc)[:200]}"
                self.refusals.append(Refusal(server_round, node, fc.owner_text(reason)))
                continue
            msg.content = RecordDict({fc.ARRAYS: booster_record(booster), fc.METRICS: MetricRecord(metrics)})
            kept.append((msg, booster))
        return sorted(kept, key=lambda pair: int(pair[0].metadata.src_node_id))  # one order whatever the arrival

    def note_global(self, arrays: ArrayRecord) -> None:
        """The model configure_train sends, checked as owners will check it (an empty one: round 1)."""
        raw = arrays["0"].numpy().tobytes() if len(arrays) == 1 else b"?"
        self.global_model = None if raw == b"" else booster_json.parse(
            raw, fedxgb.global_limits(self.schema, self.params, self.max_trees))


def booster_record(booster: booster_json.Booster | None) -> ArrayRecord:
    """How a booster travels: its checked JSON (with iteration_indptr) as one uint8 array; None: round 1's empty."""
    raw = b"" if booster is None else booster.to_bytes(indptr=True)
    return ArrayRecord([np.frombuffer(raw, dtype=np.uint8)])


class CheckedFedXgbBagging(BoosterScreen, FedXgbBagging):
    """FedXgbBagging over checked replies: each owner's new trees appended, classes kept.

    Every owner boosts from the same global model, so each owner's new trees are a whole boosting step
    computed on its rows. ``combine`` "sum" appends them as they are, as Flower does: N owners move the
    model N steps at once. "average" scales each owner's leaves by its share of the round's rows
    (num-examples, after the round's caps), so a round moves the model by the row-weighted average
    step, FedAvg of the owners' steps (fedxgb.COMBINES says when each is the default).
    """

    def __init__(self, *args: Any, combine: str = "sum", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if combine not in ("average", "sum"):
            raise ConfigError(f"bagging combine {combine!r}: average or sum")
        self.combine = combine

    def reply_limits(self) -> booster_json.Limits:
        return fedxgb.reply_limits(self.schema, self.params, "bagging", self.max_trees)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        self.note_global(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self.screen_boosters(server_round, replies)
        self._check_and_log_replies([m for m, _ in kept], is_train=True)  # Flower's consistency checks and log
        if not kept:
            return None, None
        model = self.global_model
        rows = sum(int(msg.content[fc.METRICS][fc.NUM_EXAMPLES]) for msg, _ in kept)
        for msg, booster in kept:
            if model is not None and model.n_trees + booster.n_trees > self.max_trees:
                self.refusals.append(Refusal(server_round, int(msg.metadata.src_node_id),
                                             f"booster refused: the run's budget of {self.max_trees} trees is spent"))
                continue
            if self.combine == "average":
                booster = booster_json.scale_leaves(booster, int(msg.content[fc.METRICS][fc.NUM_EXAMPLES]) / rows)
            model = booster_json.append_trees(model, booster)
        self.global_model = model
        self.current_bst = None if model is None else model.to_bytes(indptr=True)
        metrics = self.train_metrics_aggr_fn([m.content for m, _ in kept], self.weighted_by_key)
        return booster_record(model), metrics


class CheckedFedXgbCyclic(BoosterScreen, FedXgbCyclic):
    """FedXgbCyclic over a checked reply: the whole model, which must keep every tree it was sent."""

    def reply_limits(self) -> booster_json.Limits:
        current = self.global_model.n_trees if self.global_model is not None else 0
        return fedxgb.reply_limits(self.schema, self.params, "cyclic", self.max_trees, current)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        self.note_global(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def check_content(self, content: RecordDict) -> tuple[booster_json.Booster, dict[str, Any]]:
        booster, metrics = super().check_content(content)
        if not booster_json.extends(self.global_model, booster):
            raise booster_json.BoosterRefused("the reply changes trees of the global model it was sent "
                                              "(a cyclic reply may only add trees after them)")
        return booster, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self.screen_boosters(server_round, replies)
        if not kept:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, [kept[0][0]])
        self.global_model = kept[0][1]
        return arrays, metrics


def strategy(mode: fedxgb.Mode, schema: DatasetSchema, params: fedxgb.BoostParams, max_trees: int, **kwargs: Any
             ) -> CheckedFedXgbBagging | CheckedFedXgbCyclic:
    """The checked strategy of a run's mode; ``kwargs`` go to Flower's strategy (fractions, min nodes)."""
    cls = {"bagging": CheckedFedXgbBagging, "cyclic": CheckedFedXgbCyclic}.get(mode)
    if cls is None:
        raise ConfigError(f"xgboost mode {mode!r}: one of {', '.join(fedxgb.MODES)}")
    return cls(schema, params, max_trees, **kwargs)
