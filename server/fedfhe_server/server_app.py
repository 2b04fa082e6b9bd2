"""The Flower ServerApp: FedAvg of coef_/intercept_ over N rounds, then a safe artifact.

Runs inside the SuperLink's ``flwr-serverapp`` process on the coordinator; the
run config (set by ``fedfhe-server train`` through ``flwr run``) says what to train.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedfhe_common import models
from fedfhe_common.artifact import TrainingArtifact
from fedfhe_common.data import load_table
from fedfhe_common.schema import DatasetSchema, resolve_schema
from fedfhe_common.transport import from_arrays, to_arrays

from fedfhe_common.scoring import score_params

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg that also records, per round, which nodes answered, which failed and why."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, dict[str, Any]] = {}

    def _entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round, "failures": []})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._entry(server_round)["started"] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def _note(self, server_round: int, replies: list[Message], phase: str) -> None:
        entry = self._entry(server_round)
        ok = [m for m in replies if not m.has_error()]
        entry[f"{phase}_nodes"] = len(ok)
        entry[f"{phase}_owners"] = sorted(_owner(m) for m in ok)
        for m in replies:
            if m.has_error():
                entry["failures"].append(
                    {"phase": phase, "node_id": int(m.metadata.src_node_id), "reason": m.error.reason}
                )
        seconds = [float(m.content.metric_records["metrics"].get(f"{phase}-seconds", 0.0)) for m in ok]
        entry[f"{phase}_seconds_max"] = max(seconds, default=0.0)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._note(server_round, replies, "fit")
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._note(server_round, replies, "eval")
        return super().aggregate_evaluate(server_round, replies)


def _owner(msg: Message) -> str:
    rec = msg.content.config_records.get("owner")
    return str(rec["owner-id"]) if rec is not None and "owner-id" in rec else f"node-{msg.metadata.src_node_id}"


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Flower's own sampler waits forever; fail with a clear message instead."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} SuperNode(s) connected after {timeout:.0f}s, the run needs {minimum}; "
                "check that every data owner's flower-supernode is running and registered"
            )
        time.sleep(0.5)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    schema = resolve_schema(str(cfg["schema"]))
    family = str(cfg["model"])
    models.check_family(family, schema)
    model_params = json.loads(str(cfg["model-params"]))
    rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg["min-nodes"])
    out_dir = Path(str(cfg["output-dir"]) or "fedfhe-training")
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / "progress.jsonl"
    progress.write_text("")

    public: tuple[np.ndarray, np.ndarray] | None = None
    if str(cfg["public-test"]):
        public = load_table(str(cfg["public-test"]), schema)

    strategy = RecordingFedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    started = time.time()

    def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        params = from_arrays(arrays, family, schema)
        metrics = score_params(family, model_params, params, schema, *public) if public else {}
        if server_round == 0:
            return MetricRecord(metrics) if metrics else None
        entry = strategy.rounds.get(server_round, {"round": server_round, "failures": []})
        entry["seconds"] = time.time() - entry.get("started", started)
        entry["server"] = metrics
        client_eval = result_holder.get("eval", {}).get(server_round)
        entry["clients"] = dict(client_eval) if client_eval else {}
        with progress.open("a") as fh:
            fh.write(json.dumps(entry, default=float) + "\n")
        return MetricRecord(metrics) if metrics else None

    # evaluate_fn runs after aggregate_evaluate, so it can read the client metrics of its round.
    result_holder: dict[str, dict[int, MetricRecord]] = {}
    original = strategy.aggregate_evaluate

    def aggregate_evaluate(server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        agg = original(server_round, replies)
        if agg is not None:
            result_holder.setdefault("eval", {})[server_round] = agg
        return agg

    strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]

    wait_for_nodes(grid, min_nodes, float(cfg["wait-for-nodes"]))
    train_config = ConfigRecord(
        {
            "model": family,
            "model-params": json.dumps(model_params),
            "schema-name": schema.name,
            "n-features": schema.n_features,
            "local-epochs": int(cfg["local-epochs"]),
        }
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=to_arrays(models.initial_parameters(family, schema)),
        num_rounds=rounds,
        timeout=float(cfg["round-timeout"]),
        train_config=train_config,
        evaluate_config=ConfigRecord(dict(train_config)),
        evaluate_fn=on_round,
    )
    if not len(result.arrays):
        raise RuntimeError("no round produced aggregated parameters: every node failed; see the failures in progress.jsonl")
    coef, intercept = from_arrays(result.arrays, family, schema)
    per_round = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    TrainingArtifact(
        family=family,
        schema=schema,
        coef=coef,
        intercept=intercept,
        model_params=model_params,
        metrics={"rounds": rounds, "per_round": per_round, "seconds": time.time() - started},
        origin="federated",
    ).save(out_dir / "artifact")
