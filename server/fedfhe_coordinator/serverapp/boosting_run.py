"""The ServerApp's federated XGBoost run: Flower's FedXgbBagging / FedXgbCyclic over checked boosters.

Same round table, reply checks (``tree_recording``), final evaluation and signed
artifact as a linear run; the artifact is the pickle-free ``xgboost.json`` that
``compile`` reads (``federated_trees.to_artifact``). Runs are plain: the owners'
boosters are not vectors SecAgg+ could sum, so each owner opts in with
``privacy.require_secure_aggregation: false`` and bounds what it boosts with
``privacy.trees``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import fedxgb
from fedfhe_common.ml.booster_eval import scores
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.federated_trees import to_artifact
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy, client_scores, final_evaluation
from fedfhe_coordinator.serverapp.tree_recording import make_tree_strategy
from fedfhe_coordinator.serverapp.tree_strategy import booster_record


def plan(run: RunConfig) -> tuple[fedxgb.Mode, fedxgb.BoostParams, int]:
    """The run config's boosting plan, checked (the coordinator's config already checked it against the budget)."""
    if run.xgboost_mode not in fedxgb.MODES:
        raise ConfigError(f"run config xgboost-mode {run.xgboost_mode!r}: one of {', '.join(fedxgb.MODES)}")
    if run.xgboost_max_trees < 1:
        raise ConfigError("run config xgboost-max-trees must be at least 1 (training.xgboost_budget)")
    return run.xgboost_mode, fedxgb.BoostParams.from_mapping(run.xgboost_params, "run config xgboost-params"), \
        run.xgboost_max_trees  # type: ignore[return-value]


def _global(arrays: ArrayRecord, schema: DatasetSchema, params: fedxgb.BoostParams, max_trees: int
            ) -> booster_json.Booster | None:
    raw = arrays["0"].numpy().tobytes() if len(arrays) == 1 else b""
    return booster_json.parse(raw, fedxgb.global_limits(schema, params, max_trees)) if raw else None


def run_boosting(grid: Grid, run: RunConfig, schema: DatasetSchema, config: ConfigRecord, policy: ReplyPolicy,
                 prep: Preprocessing, public: tuple[np.ndarray, np.ndarray] | None, progress: Path, out_dir: Path,
                 summary: dict[str, Any]) -> None:
    """Train, evaluate and save the federated booster as the run's artifact (``summary``: the run's metrics so far:
    statistics, privacy, start time)."""
    mode, params, max_trees = plan(run)
    rounds, timeout = run.num_server_rounds, run.round_timeout
    for key, value in fedxgb.instruction(mode, params, max_trees).items():
        config[key] = value
    if run.xgboost_combine not in ("average", "sum"):
        raise ConfigError(f"run config xgboost-combine {run.xgboost_combine!r}: average or sum")
    strategy = make_tree_strategy(mode, progress, policy, run.owner_keys, run.wait_for_nodes, run.min_nodes, params,
                                  max_trees, run.xgboost_combine)
    strategy.counter = grid  # type: ignore[assignment]
    started = summary["started"]

    def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = scores(_global(arrays, schema, params, max_trees), *public, schema) if public else {}
        if server_round >= 1:
            entry = strategy.entry(server_round)
            entry["seconds"] = time.time() - entry.get("started", started)
            entry["server"] = metrics
            model = strategy.global_model
            entry["trees"] = 0 if model is None else model.n_trees
        return MetricRecord(metrics) if metrics else None

    final = strategy.start(grid=grid, initial_arrays=booster_record(None), num_rounds=rounds, timeout=timeout,
                           train_config=config, evaluate_fn=on_round).arrays
    raw = final["0"].numpy().tobytes() if len(final) == 1 else b""
    if not raw:
        raise RuntimeError(f"no round produced a booster: every owner failed (see {progress})")
    strategy.learn_names(grid)
    sent, replies = final_evaluation(grid, final, config, timeout)
    replies, rejected = strategy.screen(rounds, replies, "eval", sent)
    strategy.note_replies(rounds, replies, "eval", sent, rejected)
    strategy.entry(rounds)["clients"] = client_scores([m for m in replies if id(m) not in rejected])
    strategy.flush(rounds)
    per_round = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    how = f", owners' trees combined by {run.xgboost_combine}" if mode == "bagging" else ""
    metrics = {"aggregation": {"used": f"fedxgb-{mode}", "why": f"model {policy.family}: Flower's FedXgb"
                                                                  f"{mode.capitalize()} over checked boosters{how}"},
               "per_round": per_round, "seconds": time.time() - started, "privacy": summary["privacy"],
               "statistics": summary["statistics"],
               "xgboost_budget": {"max_trees": max_trees, "max_n_bits": run.xgboost_max_n_bits}}
    to_artifact(raw, policy.family, schema, params, max_trees, mode=mode, rounds=rounds, metrics=metrics,
                preprocessing=prep).save(out_dir / "artifact", mode=0o750)
