"""The ServerApp's round recording (rounds.Recording) over the checked FedXgb strategies.

Recording screens replies with fl_contract's linear checks (coef_, intercept_);
a boosting reply is a booster, so its train replies are screened by
``BoosterScreen.check_content`` instead: a refused booster lands in the round
table's ``failures`` with the owner's registered name and the reason, exactly as
a refused linear reply does, and never reaches the aggregate. Evaluate replies
(metrics only) keep Recording's own check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Message, MetricRecord, RecordDict
from flwr.common import Error

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.ml import fedxgb
from fedfhe_coordinator.serverapp.rounds import Recording, ReplyPolicy
from fedfhe_coordinator.serverapp.tree_strategy import (
    BoosterScreen,
    CheckedFedXgbBagging,
    CheckedFedXgbCyclic,
    booster_record,
)


class RecordingXgb(Recording, BoosterScreen):
    """Recording whose train-reply screen is the booster check (mixed before a CheckedFedXgb* strategy)."""

    def screen(self, server_round: int, replies: list[Message], phase: str,
               sent: list[Message] | None = None) -> tuple[list[Message], dict[int, str]]:
        if phase != "fit":
            return super().screen(server_round, replies, phase, sent)
        kept: list[Message] = []
        rejected: dict[int, str] = {}
        for m in replies:
            if m.has_error():
                m.error = Error(int(m.error.code), fc.owner_text(m.error.reason))
            else:
                try:
                    booster, metrics = self.check_content(m.content)
                except booster_json.BoosterRefused as exc:
                    rejected[id(m)] = f"booster refused: {exc}"
                except Exception as exc:  # noqa: BLE001 - any malformed record is that owner's failure
                    rejected[id(m)] = f"malformed reply: {type(exc).__name__}: {str(exc)[:200]}"
                else:
                    m.content = RecordDict({fc.ARRAYS: booster_record(booster), fc.METRICS: MetricRecord(metrics)})
            kept.append(m)
        return kept, rejected


class RecordingXgbBagging(RecordingXgb, CheckedFedXgbBagging):
    """FedXgbBagging with fedfhe's booster checks and round table."""


class RecordingXgbCyclic(RecordingXgb, CheckedFedXgbCyclic):
    """FedXgbCyclic with fedfhe's booster checks and round table: one owner trains per round, so one good
    reply is a full round (Flower's own min_train_nodes of 2 only sizes its sampling)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_train_nodes = 1


def make_tree_strategy(mode: fedxgb.Mode, progress: Path, policy: ReplyPolicy, owner_keys: dict[str, str],
                       node_wait: float, min_nodes: int, params: fedxgb.BoostParams, max_trees: int,
                       combine: str = "sum") -> RecordingXgbBagging | RecordingXgbCyclic:
    """rounds.make_strategy's counterpart for a boosting run (``policy.family`` XGBClassifier/XGBRegressor)."""
    fedxgb.check_schema(policy.family, policy.schema)
    common = {"owner_keys": owner_keys, "node_wait": node_wait, "fraction_evaluate": 0.0,
              "min_available_nodes": min_nodes}
    if mode == "bagging":
        return RecordingXgbBagging(progress, policy, schema=policy.schema, params=params, max_trees=max_trees,
                                   max_rows=policy.max_examples, min_train_nodes=min_nodes, fraction_train=1.0,
                                   combine=combine, **common)
    if mode == "cyclic":
        return RecordingXgbCyclic(progress, policy, schema=policy.schema, params=params, max_trees=max_trees,
                                  max_rows=policy.max_examples, **common)
    raise ValueError(f"xgboost mode {mode!r}: one of {', '.join(fedxgb.MODES)}")
