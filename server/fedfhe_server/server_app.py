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
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedfhe_common import models
from fedfhe_common.artifact import TrainingArtifact
from fedfhe_common.data import load_table
from fedfhe_common.schema import resolve_schema
from fedfhe_common.scoring import score_params
from fedfhe_common.transport import from_arrays, to_arrays

from .prompt_grid import PromptGrid

app = ServerApp()


def _owner(msg: Message) -> str:
    rec = msg.content.config_records.get("owner")
    return str(rec["owner-id"]) if rec is not None and "owner-id" in rec else f"node-{msg.metadata.src_node_id}"


class NodesLost(RuntimeError):
    """Too few SuperNodes left for the run's minimum: the run stops with this message."""


class BoundedGrid:
    """The grid as Flower's node sampler sees it: one stable node list, and a deadline.

    ``flwr.serverapp.strategy.strategy_utils.sample_nodes`` polls ``get_node_ids``
    until enough nodes are connected, forever, and FedAvg asks twice (once to size
    the sample, once to draw it): a node dropping in between would make it wait for
    a count that never comes back. Here the first list with ``minimum`` nodes is
    kept for the whole sampling, and once the count has stayed below ``minimum``
    for ``timeout`` seconds NodesLost is raised instead of waiting on.
    """

    def __init__(self, inner: Grid, minimum: int, timeout: float, describe: Any = None) -> None:
        self._inner = inner
        self._minimum = minimum
        self._timeout = timeout
        self._describe = describe or (lambda nodes: "")
        self._since: float | None = None
        self._nodes: list[int] | None = None

    def get_node_ids(self) -> list[int]:
        if self._nodes is not None:
            return list(self._nodes)
        nodes = list(self._inner.get_node_ids())
        if len(nodes) >= self._minimum:
            self._nodes = nodes
            return list(nodes)
        now = time.monotonic()
        if self._since is None:
            self._since = now
        elif now - self._since > self._timeout:
            raise NodesLost(
                f"only {len(nodes)} SuperNode(s) connected after waiting {self._timeout:.0f}s, the run needs "
                f"{self._minimum}{self._describe(nodes)}; restart the missing data owners' flower-supernode "
                "and run the training again"
            )
        return nodes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


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
    """FedAvg that records each round: who answered, who failed and why, who never replied.

    A round whose sampled nodes did not all reply within the round timeout lists
    them under ``missing`` (owner ids where an earlier reply named the owner,
    ``node-<id>`` otherwise). A round with fewer than ``min_train_nodes`` good
    replies stops the run with NodesLost naming the owners it lacked, and so does
    a wait of more than ``node_wait`` seconds for ``min_available_nodes``.
    """

    def __init__(self, progress: Path, node_wait: float = 120.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.progress = progress
        self.node_wait = node_wait
        self.rounds: dict[int, dict[str, Any]] = {}
        self.owners: dict[int, str] = {}  # node id -> owner id, learnt from replies
        self.sent: dict[tuple[int, str], list[Message]] = {}
        self.flushed: set[int] = set()

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round, "failures": [], "missing": []})

    def owner_of(self, node_id: int) -> str:
        return self.owners.get(int(node_id), f"node-{int(node_id)}")

    def learn_names(self, grid: Grid) -> None:
        """Names given at registration (`flwr supernode register --name`), when there are any."""
        try:
            for info in grid.get_nodes():
                if getattr(info, "name", ""):
                    self.owners.setdefault(int(info.node_id), str(info.name))
        except Exception:  # noqa: BLE001 - names are a nicety; replies name owners too
            pass

    def _describe_missing(self, nodes: list[int]) -> str:
        gone = sorted({self.owner_of(n) for n in self.owners if n not in set(nodes)})
        return f" (not connected: {', '.join(gone)})" if gone else ""

    def bounded(self, grid: Grid) -> Any:
        return BoundedGrid(grid, max(self.min_available_nodes, self.min_train_nodes), self.node_wait,
                           self._describe_missing)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.entry(server_round)["started"] = time.time()
        self.learn_names(grid)
        messages = list(super().configure_train(server_round, arrays, config, self.bounded(grid)))
        self.sent[(server_round, "fit")] = messages
        return messages

    def note_replies(
        self, server_round: int, replies: list[Message], phase: str, sent: list[Message] | None = None
    ) -> None:
        """Record who answered, who failed (error reply) and which sampled nodes never replied.

        ``sent`` are the messages of this phase, their ids set by the grid's push:
        a reply (or the SuperLink's error on a node's behalf) names its message.
        """
        entry = self.entry(server_round)
        sent = sent if sent is not None else self.sent.get((server_round, phase), [])
        dst = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent if m.metadata.message_id}
        ok = [m for m in replies if not m.has_error()]
        for m in ok:
            self.owners[int(m.metadata.src_node_id)] = _owner(m)
        entry[f"{phase}_nodes"] = len(ok)
        entry[f"{phase}_owners"] = sorted(_owner(m) for m in ok)
        answered: set[int] = set()
        missing: dict[int, str] = {}
        for m in replies:
            node = dst.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id))
            if not m.has_error():
                answered.add(node)
            elif int(m.error.code) in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE):
                missing[node] = m.error.reason  # the SuperLink answered for a node that is gone
            else:
                answered.add(node)
                entry["failures"].append(
                    {"phase": phase, "node_id": node, "owner": self.owner_of(node), "reason": m.error.reason}
                )
        for node in dst.values():
            if node not in answered and node not in missing:
                missing[node] = "no reply within the round timeout"
        for node, reason in sorted(missing.items()):
            entry["missing"].append({"phase": phase, "node_id": node, "owner": self.owner_of(node), "reason": reason})
        seconds = [float(m.content.metric_records["metrics"].get(f"{phase}-seconds", 0.0)) for m in ok]
        entry[f"{phase}_seconds_max"] = max(seconds, default=0.0)

    def missing_owners(self, server_round: int) -> list[str]:
        return sorted({m["owner"] for m in self.entry(server_round)["missing"]})

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self.note_replies(server_round, replies, "fit")
        # These replies scored the model of the previous round.
        self.entry(server_round - 1)["clients"] = client_scores(replies)
        self.flush(server_round - 1)
        entry = self.entry(server_round)
        if entry["fit_nodes"] < self.min_train_nodes:
            entry["error"] = self.shortfall(server_round)
            self.flush(server_round)
            raise NodesLost(entry["error"])
        return super().aggregate_train(server_round, replies)

    def shortfall(self, server_round: int) -> str:
        entry = self.entry(server_round)
        trained, needed = entry["fit_nodes"], self.min_train_nodes
        parts = [f"round {server_round}: {trained} SuperNode(s) trained, the run needs {needed}"]
        missing = self.missing_owners(server_round)
        if missing:
            parts.append(f"no reply from {', '.join(missing)}")
        # Each failed owner with its reason (a bad data file, a refused Flower App, ...), shortened.
        failed = sorted({f"{f['owner']} ({f['reason'][:300]})" for f in entry["failures"] if f["phase"] == "fit"})
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
        return "; ".join(parts) + f" (see {self.progress})"

    def flush(self, server_round: int) -> None:
        if server_round < 1 or server_round in self.flushed:
            return
        self.flushed.add(server_round)
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


def final_evaluation(
    grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float
) -> tuple[list[Message], list[Message]]:
    """One evaluate message per node for the final model (rounds only carry the previous one).

    Returns the messages sent (their ids set by the push) and the replies.
    """
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": config}),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        for node in grid.get_node_ids()
    ]
    return messages, list(grid.send_and_receive(messages, timeout=timeout))


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
        node_wait=float(cfg["wait-for-nodes"]),
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
    sent, replies = final_evaluation(grid, result.arrays, config, timeout)
    strategy.note_replies(rounds, replies, "eval", sent)
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
