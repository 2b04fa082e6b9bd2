"""The Flower ServerApp: FedAvg of coef_/intercept_ over N rounds, then a safe artifact.

Runs inside the SuperLink's ``flwr-serverapp`` process on the coordinator; the
run config (set by ``fedfhe-server train`` through ``flwr run``) says what to train.

Clients score the global model they receive on their held-out rows inside the
train message, so round r's client accuracy arrives with round r+1's replies
(and with one final evaluate message for the last round). A round's progress
line is written once both its server-side and client-side scores are known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from fedfhe_common import models
from fedfhe_common.artifact import TrainingArtifact
from fedfhe_common.data import load_table
from fedfhe_common.schema import resolve_schema
from fedfhe_common.scoring import score_params
from fedfhe_common.transport import from_arrays, to_arrays
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .prompt_grid import PromptGrid

app = ServerApp()


def _owner(msg: Message) -> str:
    rec = msg.content.config_records.get("owner")
    return str(rec["owner-id"]) if rec is not None and "owner-id" in rec else f"node-{msg.metadata.src_node_id}"


def client_scores(replies: list[Message]) -> dict[str, float]:
    """Held-out scores weighted by each owner's held-out row count."""
    recs = [m.content.metric_records["metrics"] for m in replies if not m.has_error()]
    total = sum(float(r.get("eval-examples", 0)) for r in recs)
    if not recs or total <= 0:
        return {}
    keys = [k for k in recs[0] if k.startswith("eval-") and k not in ("eval-examples", "eval-seconds")]
    out = {k[5:]: sum(float(r[k]) * float(r["eval-examples"]) for r in recs) / total for k in keys}
    out["examples"] = total
    return out


class RecordingFedAvg(FedAvg):
    """FedAvg that records each round: who answered, who failed and why, scores and timings."""

    def __init__(self, progress: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.progress = progress
        self.rounds: dict[int, dict[str, Any]] = {}

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round, "failures": []})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.entry(server_round)["started"] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def note_replies(self, server_round: int, replies: list[Message], phase: str) -> None:
        entry = self.entry(server_round)
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
        self.note_replies(server_round, replies, "fit")
        # These replies scored the model of the previous round.
        self.entry(server_round - 1)["clients"] = client_scores(replies)
        self.flush(server_round - 1)
        return super().aggregate_train(server_round, replies)

    def flush(self, server_round: int) -> None:
        if server_round < 1:
            return
        entry = self.rounds[server_round]
        with self.progress.open("a") as fh:
            fh.write(json.dumps(entry, default=float) + "\n")


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


def final_evaluation(grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float) -> list[Message]:
    """One evaluate message per node for the final model (rounds only carry the previous one)."""
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": config}),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        for node in grid.get_node_ids()
    ]
    return list(grid.send_and_receive(messages, timeout=timeout))


@app.main()
def main(grid: Grid, context: Context) -> None:
    grid = PromptGrid(grid)
    cfg = context.run_config
    schema = resolve_schema(str(cfg["schema"]))
    family = str(cfg["model"])
    models.check_family(family, schema)
    model_params = json.loads(str(cfg["model-params"]))
    rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg["min-nodes"])
    timeout = float(cfg["round-timeout"])
    out_dir = Path(str(cfg["output-dir"]) or "fedfhe-training")
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / "progress.jsonl"
    progress.write_text("")

    public: tuple[np.ndarray, np.ndarray] | None = None
    if str(cfg["public-test"]):
        public = load_table(str(cfg["public-test"]), schema)

    strategy = RecordingFedAvg(
        progress,
        fraction_train=1.0,
        fraction_evaluate=0.0,  # clients score inside the train message
        min_train_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    started = time.time()

    def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        params = from_arrays(arrays, family, schema)
        metrics = score_params(family, model_params, params, schema, *public) if public else {}
        if server_round >= 1:
            entry = strategy.entry(server_round)
            entry["seconds"] = time.time() - entry.get("started", started)
            entry["server"] = metrics
        return MetricRecord(metrics) if metrics else None

    wait_for_nodes(grid, min_nodes, float(cfg["wait-for-nodes"]))
    config = ConfigRecord(
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
        timeout=timeout,
        train_config=config,
        evaluate_fn=on_round,
    )
    if not len(result.arrays):
        raise RuntimeError("no round produced aggregated parameters: every node failed (see progress.jsonl)")
    replies = final_evaluation(grid, result.arrays, config, timeout)
    strategy.note_replies(rounds, replies, "eval")
    strategy.entry(rounds)["clients"] = client_scores(replies)
    strategy.flush(rounds)

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
