"""The Flower ServerApp: coef_/intercept_ aggregated over N rounds (FedAvg or a robust rule), then an artifact.

Every reply is checked against fl_contract before it counts; a reply that breaks
it is its owner's failure for the round, named from the SuperNode registration.

Runs inside the SuperLink's ``flwr-serverapp`` process on the coordinator; the
run config (set by ``fedfhe-coordinator train`` through ``flwr run``) says what to train.

Clients score the global model they receive on their held-out rows inside the
train message, so round r's client accuracy arrives with round r+1's replies
(and, in plain runs, with one final evaluate message for the last round; a
secure run's owners send only the sum of their scores, inside SecAgg+, so its
last round has no owners' score). A round's progress line is written once both
its server-side and client-side scores are known.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Error
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.contracts.transport import from_arrays, to_arrays
from fedfhe_common.ml import models, newton
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.models import FEDERATED_TREES
from fedfhe_common.ml.preprocessing import Preprocessing, needs_statistics
from fedfhe_common.ml.scoring import score_params
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.aggregation import resolve, strategy_class, strategy_kwargs
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.privacy import privacy_summary
from fedfhe_coordinator.serverapp.wire_bytes import CountingGrid

app = ServerApp()


def node_owners(grid: Grid, owner_keys: dict[str, str]) -> dict[int, str]:
    """Node id -> owner name of the connected nodes, from their registered public keys (never from a reply)."""
    try:
        nodes = list(grid.get_nodes())
    except Exception:  # noqa: BLE001 - unknown nodes stay node-<id>; the run goes on
        return {}
    out = {}
    for info in nodes:
        owner = owner_keys.get(fc.owner_key_id(bytes(getattr(info, "public_key", b"") or b"")))
        if owner:
            out[int(info.node_id)] = owner
    return out


class NodesLost(RuntimeError):
    """Too few SuperNodes left for the run's minimum: the run stops with this message."""


class TrainingStopped(Exception):
    """Round ``server_round`` would send the global model an earlier round of this run sent: training ends there.

    Owners refuse to train on one model twice in a run (fedfhe_owner.clientapp.run_ledger.refuse_replayed_model: a model
    sent twice to owner sets that differ by one owner gives away that owner's update), so the round could not
    run. Honest runs get here two ways. The model is a fixed point of the rounds: LinearRegression, Ridge and
    LinearSVC refit from scratch whatever model they get, so FedAvg soon repeats one (round 3 repeats round 2
    when the replies arrive in the same order), and more rounds would only repeat it. Or the last round failed
    and left the model as it was (newton's step dropped, a secure round's sum dropped): a retry of the same
    model is what owners refuse, so the run ends with the model it has. ``arrays``: that model (plain runs; a
    secure run reads it from Flower's state).
    """

    def __init__(self, server_round: int, earlier: int, arrays: ArrayRecord | None = None) -> None:
        super().__init__(f"round {server_round} would send round {earlier}'s global model again, which owners refuse "
                         f"(issue 25): training ended after round {server_round - 1}")
        self.server_round, self.earlier, self.arrays = server_round, earlier, arrays


class OwnersChanged(TrainingStopped):
    """Round ``server_round``'s SecAgg+ sum was refused by owners because an owner of the run was lost: owners
    sum only over the run's first set of owners (fedfhe_owner.clientapp.run_ledger.check_fixed_membership), so no later
    round can complete, and training ends with the model this round was sent (``earlier`` is this round: the
    initial model when it is round 1)."""

    def __init__(self, server_round: int, why: str) -> None:
        Exception.__init__(self, f"round {server_round}: owners refused a sum over other owners than the run's "
                                 f"({why}); owners sum only over the run's first set of owners (issue 25), so "
                                 f"training ended after round {server_round - 1}")
        self.server_round, self.earlier, self.arrays = server_round, server_round, None


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
    """Held-out scores weighted by each owner's held-out row count (replies already checked)."""
    recs = [m.content.metric_records[fc.METRICS] for m in replies if not m.has_error()]
    total = sum(float(r[fc.EVAL_EXAMPLES]) for r in recs)
    if not recs or total <= 0:
        return {}
    keys = [k for k in recs[0] if k.startswith(fc.EVAL_PREFIX) and k not in (fc.EVAL_EXAMPLES, fc.EVAL_SECONDS)]
    out = {k[len(fc.EVAL_PREFIX):]: sum(float(r[k]) * float(r[fc.EVAL_EXAMPLES]) for r in recs) / total
           for k in keys}
    out["examples"] = total
    return out


@dataclass(frozen=True)
class ReplyPolicy:
    """What a reply must be to count: the run's model family and schema, row caps, update clipping."""

    family: str
    schema: DatasetSchema
    max_examples: int = fc.DEFAULT_MAX_EXAMPLES
    newton_terms: bool = False  # train replies carry Newton terms (fl_contract.newton_shapes), not parameters
    per_owner: dict[str, int] = field(default_factory=dict)
    clip_norm: float = 0.0
    max_share: float = 0.0  # training.max_owner_share: 0 = off

    def cap(self, owner: str) -> int:
        return fc.cap_for(owner, self.max_examples, self.per_owner)


def cap_shares(counts: list[int], max_share: float) -> list[int]:
    """The counts with one cap T on all, the largest that leaves no reply above ``max_share`` of the total.

    Water-filling: with the k largest counts cut to T, each holds T / (k T + rest), so
    T = share x rest / (1 - share x k) for the smallest k whose (k+1)-th count stays
    below that T. One owner claiming a huge count is cut against what the others
    hold; the order of the counts never changes. Needs ``max_share >= 1 / owners``
    (config: 1 / min_nodes), where equal counts are the last resort.
    """
    if max_share <= 0 or len(counts) < 2 or max(counts) <= max_share * sum(counts):
        return list(counts)
    ordered = sorted(counts, reverse=True)
    for k in range(1, len(ordered)):
        if max_share * k >= 1:
            break
        cap = max_share * sum(ordered[k:]) / (1.0 - max_share * k)
        if cap >= ordered[k]:
            return [min(c, max(1, math.floor(cap))) for c in counts]
    return [min(c, min(counts)) for c in counts]


def clip_update(params: list[np.ndarray], reference: list[np.ndarray], clip_norm: float) -> list[np.ndarray]:
    """Scale an owner's update (params - reference) down to L2 norm ``clip_norm`` when it is longer."""
    updates = [p - r for p, r in zip(params, reference, strict=True)]
    norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in updates)))
    if clip_norm <= 0 or norm <= clip_norm:
        return params
    return [r + u * (clip_norm / norm) for r, u in zip(reference, updates, strict=True)]


class Recording:
    """Mixed into a Flower strategy: records each round and lets only contract-true replies through.

    Who answered, who failed and why, who never replied. A reply that breaks the
    contract (fl_contract.check_reply: shapes, finite values, a row count within
    the owner's cap, the declared metrics) is that owner's failure for the round
    with the reason, and never reaches the aggregate. Owners are named from the
    SuperNode's registered public key (``owner_keys``: key id -> name), never from
    a reply; a node whose key is not known is ``node-<id>``.

    A round whose sampled nodes did not all reply within the round timeout lists
    them under ``missing``. A round with fewer than ``min_train_nodes`` good
    replies stops the run with NodesLost naming the owners it lacked, and so does
    a wait of more than ``node_wait`` seconds for ``min_available_nodes``.
    """

    min_available_nodes: int
    min_train_nodes: int

    def __init__(
        self, progress: Path, policy: ReplyPolicy, owner_keys: dict[str, str] | None = None,
        node_wait: float = 120.0, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.progress = progress
        self.policy = policy
        self.owner_keys = dict(owner_keys or {})
        self.node_wait = node_wait
        self.rounds: dict[int, dict[str, Any]] = {}
        self.owners: dict[int, str] = {}  # node id -> owner name, from the SuperNode registration
        self.sent: dict[tuple[int, str], list[Message]] = {}
        self.global_params: dict[int, list[np.ndarray]] = {}
        self.sent_models: dict[str, int] = {}  # fl_contract.model_digest -> the round that sent it
        self.stopped: TrainingStopped | None = None
        self.flushed: set[int] = set()
        self.counter: CountingGrid | None = None  # bytes per owner and round, when the grid counts them

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round, "failures": [], "missing": []})

    def owner_of(self, node_id: int) -> str:
        return self.owners.get(int(node_id), f"node-{int(node_id)}")

    def learn_names(self, grid: Grid) -> None:
        """Owner names of the connected nodes, from their registered public keys."""
        self.owners.update(node_owners(grid, self.owner_keys))

    def _describe_missing(self, nodes: list[int]) -> str:
        gone = sorted({self.owner_of(n) for n in self.owners if n not in set(nodes)})
        return f" (not connected: {', '.join(gone)})" if gone else ""

    def bounded(self, grid: Grid) -> Any:
        return BoundedGrid(grid, max(self.min_available_nodes, self.min_train_nodes), self.node_wait,
                           self._describe_missing)

    def count_round(self, server_round: int) -> None:
        if self.counter is not None:
            self.counter.round = server_round

    def note_model(self, server_round: int, params: list[np.ndarray], arrays: ArrayRecord | None = None) -> None:
        """The model this round sends, checked (``global_params``: what clipping and newton's step start from);
        TrainingStopped, before anything is sent, when an earlier round of this run sent the same model."""
        try:
            checked = fc.check_params(params, self.policy.family, self.policy.schema)
        except fc.ReplyRejected:
            self.global_params.pop(server_round, None)  # owners refuse it anyway: their check is the same
            return
        earlier = self.sent_models.setdefault(fc.model_digest(checked), server_round)
        if earlier != server_round:
            self.stopped = TrainingStopped(server_round, earlier, arrays)
            raise self.stopped
        self.global_params[server_round] = checked

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.note_model(server_round, arrays.to_numpy_ndarrays(), arrays)
        self.entry(server_round)["started"] = time.time()
        self.count_round(server_round)
        self.learn_names(grid)
        messages = list(super().configure_train(server_round, arrays, config, self.bounded(grid)))  # type: ignore[misc]
        self.sent[(server_round, "fit")] = messages
        return messages

    def screen(self, server_round: int, replies: list[Message], phase: str,
               sent: list[Message] | None = None) -> tuple[list[Message], dict[int, str]]:
        """Check each content-carrying reply against the contract.

        Returns every reply (for note_replies) and the rejected ones as
        ``id(reply) -> reason``. Kept train replies carry the
        checked parameters (clipped when ``clip_norm`` is set) and metrics only.
        """
        dst = self._dst(server_round, phase, sent)
        kept: list[Message] = []
        rejected: dict[int, str] = {}
        contract_phase: fc.Phase = "train" if phase == "fit" else "evaluate"
        reference = self.global_params.get(server_round)
        for m in replies:
            if m.has_error():
                # The reason is the owner's text: escaped before Flower logs it or the round table shows it.
                m.error = Error(int(m.error.code), fc.owner_text(m.error.reason))
                kept.append(m)
                continue
            node = dst.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id))
            try:
                reply = fc.check_reply(m.content, contract_phase, self.policy.family, self.policy.schema,
                                       self.policy.cap(self.owner_of(node)),
                                       newton_terms=self.policy.newton_terms and contract_phase == "train")
            except fc.ReplyRejected as exc:
                rejected[id(m)] = f"reply refused: {exc}"
                kept.append(m)  # recorded as this owner's failure, then left out of the aggregate
                continue
            content = RecordDict({fc.METRICS: MetricRecord(reply.metrics)})
            if reply.params is not None:
                params = reply.params
                if reference is not None and self.policy.clip_norm > 0 and not self.policy.newton_terms:
                    params = clip_update(params, reference, self.policy.clip_norm)
                content[fc.ARRAYS] = to_arrays(params)
            m.content = content
            kept.append(m)
        return kept, rejected

    def _dst(self, server_round: int, phase: str, sent: list[Message] | None) -> dict[str, int]:
        sent = sent if sent is not None else self.sent.get((server_round, phase), [])
        return {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent if m.metadata.message_id}

    def note_replies(
        self, server_round: int, replies: list[Message], phase: str, sent: list[Message] | None = None,
        rejected: dict[int, str] | None = None,
    ) -> None:
        """Record who answered, who failed (error reply or refused reply) and which sampled nodes never replied.

        ``sent`` are the messages of this phase, their ids set by the grid's push:
        a reply (or the SuperLink's error on a node's behalf) names its message.
        ``rejected`` maps replies that broke the contract (by ``id``) to the reason.
        """
        entry = self.entry(server_round)
        dst = self._dst(server_round, phase, sent)
        rejected = rejected or {}
        ok = [m for m in replies if not m.has_error() and id(m) not in rejected]
        entry[f"{phase}_nodes"] = len(ok)
        answered: set[int] = set()
        missing: dict[int, str] = {}
        ok_nodes: list[int] = []
        for m in replies:
            node = dst.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id))
            if id(m) in rejected:
                answered.add(node)
                entry["failures"].append(
                    {"phase": phase, "node_id": node, "owner": self.owner_of(node),
                     "reason": fc.owner_text(rejected[id(m)])}
                )
            elif not m.has_error():
                answered.add(node)
                ok_nodes.append(node)
            elif int(m.error.code) in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE):
                missing[node] = fc.owner_text(m.error.reason)  # the SuperLink answered for a node that is gone
            else:
                answered.add(node)
                entry["failures"].append(
                    {"phase": phase, "node_id": node, "owner": self.owner_of(node),
                     "reason": fc.owner_text(m.error.reason)}
                )
        entry[f"{phase}_owners"] = sorted(self.owner_of(n) for n in ok_nodes)
        for node in dst.values():
            if node not in answered and node not in missing:
                missing[node] = "no reply within the round timeout"
        for node, reason in sorted(missing.items()):
            entry["missing"].append({"phase": phase, "node_id": node, "owner": self.owner_of(node), "reason": reason})
        seconds = [float(m.content.metric_records[fc.METRICS].get(f"{phase}-seconds", 0.0)) for m in ok]
        entry[f"{phase}_seconds_max"] = max(seconds, default=0.0)

    def missing_owners(self, server_round: int) -> list[str]:
        return sorted({m["owner"] for m in self.entry(server_round)["missing"]})

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies, rejected = self.screen(server_round, list(replies), "fit")
        self.note_replies(server_round, replies, "fit", rejected=rejected)
        replies = [m for m in replies if id(m) not in rejected]
        self.cap_weights(server_round, [m for m in replies if not m.has_error()])
        self.entry(server_round)["fit_rows"] = sum(int(m.content[fc.METRICS][fc.NUM_EXAMPLES])
                                                   for m in replies if not m.has_error())
        # These replies scored the model of the previous round.
        self.entry(server_round - 1)["clients"] = client_scores(replies)
        self.flush(server_round - 1)
        entry = self.entry(server_round)
        if entry["fit_nodes"] < self.min_train_nodes:
            entry["error"] = self.shortfall(server_round)
            self.flush(server_round)
            raise NodesLost(entry["error"])
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def cap_weights(self, server_round: int, replies: list[Message]) -> None:
        """training.max_owner_share: counts above their cap are lowered before FedAvg weighs them (round table:
        ``capped``, owner -> [claimed, used])."""
        counts = [int(m.content[fc.METRICS][fc.NUM_EXAMPLES]) for m in replies]
        capped = cap_shares(counts, self.policy.max_share)
        dst = self._dst(server_round, "fit", None)
        for m, claimed, used in zip(replies, counts, capped, strict=True):
            if used != claimed:
                m.content[fc.METRICS] = MetricRecord(dict(m.content[fc.METRICS]) | {fc.NUM_EXAMPLES: used})
                node = dst.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id))
                self.entry(server_round).setdefault("capped", {})[self.owner_of(node)] = [claimed, used]

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
        if self.counter is not None:
            sizes = {self.owner_of(n): b for n, b in self.counter.per_node(server_round).items()}
            entry["bytes"] = dict(sorted(sizes.items()))
        with self.progress.open("a") as fh:
            fh.write(json.dumps(entry, default=float) + "\n")


class RecordingFedAvg(Recording, FedAvg):
    """FedAvg with fedfhe's reply checks and round recording."""


class RecordingNewton(RecordingFedAvg):
    """Aggregation ``newton``: Flower's FedAvg averages the owners' checked terms, then one Newton step.

    The terms were measured at the model this round sent (``global_params``); the
    penalty is the run's over the rows that answered (their num-examples, as
    FedAvg weighs them), so the step is the pooled objective's (fedfhe_common.ml.newton).
    An averaged Hessian no convex loss has is the round's failure: the model stays.
    """

    def __init__(self, *args: Any, model_params: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_params = model_params
        self.stepper = newton.Stepper(self.policy.schema.n_features)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        arrays, metrics = super().aggregate_train(server_round, replies)
        sent = self.global_params.get(server_round)
        if arrays is None:
            return arrays, metrics
        if sent is None:  # the model this round sent broke the contract: no step can be taken from it
            self.entry(server_round)["failures"].append(
                {"phase": "fit", "node_id": 0, "owner": "(model)",
                 "reason": "this round's global model broke the contract; its terms were dropped"})
            return None, metrics
        family, schema = self.policy.family, self.policy.schema
        rows = int(self.entry(server_round)["fit_rows"])
        loss, grad, hess = fc.unpack_newton(arrays.to_numpy_ndarrays())
        w = newton.flatten(sent, family, schema)
        entry = self.entry(server_round)
        try:
            stepped = self.stepper.step(w, loss, grad, hess, newton.penalty_strength(family, self.model_params, rows))
            entry["newton"] = self.stepper.log[-1]
            fc.check_params(to_arrays(newton.unflatten(stepped, family, schema)).to_numpy_ndarrays(), family, schema)
        except (newton.NotConvex, fc.ReplyRejected) as exc:
            entry["failures"].append({"phase": "fit", "node_id": 0, "owner": "(average)",
                                      "reason": f"the averaged terms were dropped: {exc}"})
            stepped = w
        return to_arrays(newton.unflatten(stepped, family, schema)), metrics


def make_strategy(
    name: str, progress: Path, policy: ReplyPolicy, owner_keys: dict[str, str], node_wait: float, min_nodes: int,
    num_malicious_nodes: int = 0, trimmed_fraction: float = 0.2, multikrum_select: int = 0,
    server_learning_rate: float = 1.0, server_momentum: float = 0.0, model_params: dict[str, Any] | None = None,
) -> Recording:
    """Flower's strategy ``name`` (an aggregation resolved by ``aggregation.resolve``) with fedfhe's recording."""
    extra = strategy_kwargs(name, min_nodes, num_malicious_nodes, trimmed_fraction, multikrum_select,
                            server_learning_rate, server_momentum)
    if name == "newton":
        cls: type = RecordingNewton
        extra["model_params"] = dict(model_params or {})
    elif strategy_class(name) is FedAvg:
        cls = RecordingFedAvg
    else:
        base = strategy_class(name)
        cls = type(f"Recording{base.__name__}", (Recording, base), {})
    return cls(
        progress, policy, owner_keys=owner_keys, node_wait=node_wait,
        fraction_train=1.0,
        fraction_evaluate=0.0,  # clients score inside the train message
        min_train_nodes=min_nodes,
        min_available_nodes=min_nodes,
        **extra,
    )


def missing_owners(grid: Grid, owner_keys: dict[str, str], nodes: list[int]) -> list[str]:
    """Registered owners (``owner_keys``: key id -> name) with no SuperNode among ``nodes``, by name."""
    connected = {name for node, name in node_owners(grid, owner_keys).items() if node in set(nodes)}
    return sorted(set(owner_keys.values()) - connected)


def wait_for_nodes(grid: Grid, minimum: int, timeout: float, owner_keys: dict[str, str] | None = None) -> list[int]:
    """Flower's own sampler waits forever; fail with a clear message instead, naming the owners missing.

    The names let an operator see which owners' flower-supernode to start, not only how many are absent.
    """
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            missing = missing_owners(grid, owner_keys or {}, nodes)
            named = (f" (not connected: {', '.join(missing)}, of the {len(set((owner_keys or {}).values()))} "
                     "registered owners)" if missing else "")
            raise RuntimeError(
                f"only {len(nodes)} SuperNode(s) connected after {timeout:.0f}s, the run needs {minimum}{named}; "
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
            content=RecordDict({fc.ARRAYS: arrays, fc.CONFIG: config}),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        for node in grid.get_node_ids()
    ]
    return messages, list(grid.send_and_receive(messages, timeout=timeout))


@app.main()
def main(grid: Grid, context: Context) -> None:
    grid = CountingGrid(grid)
    run = RunConfig.from_flower(context.run_config)
    schema = resolve_schema(run.schema)
    family = run.model
    models.check_family(family, schema)
    model_params = run.model_params
    rounds, min_nodes, timeout = run.num_server_rounds, run.min_nodes, run.round_timeout
    out_dir = Path(run.output_dir or "fedfhe-training")
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / "progress.jsonl"
    progress.write_text("")

    raw_public = load_table(run.public_test, schema) if run.public_test else None

    secure = run.secure_aggregation
    boosting = family in FEDERATED_TREES
    if boosting and (secure or run.aggregation != "auto"):
        raise ConfigError(f"model {family} trains with Flower's FedXgb strategies in plain runs: "
                          "training.aggregation must be auto and secure aggregation off")
    aggregation, why = ("fedxgb", "boosted trees") if boosting else resolve(
        run.aggregation, family, schema, secure, run.clip_norm, secure and run.dp_noise_multiplier > 0, model_params)
    policy = ReplyPolicy(
        family, schema, max_examples=run.max_examples, per_owner=run.max_examples_per_owner,
        clip_norm=run.clip_norm, newton_terms=aggregation == "newton", max_share=run.max_owner_share,
    )
    started = time.time()

    owner_keys = run.owner_keys
    connected = wait_for_nodes(grid, min_nodes, run.wait_for_nodes, owner_keys)
    config = ConfigRecord(
        {
            fc.MODEL: family,
            fc.MODEL_PARAMS: json.dumps(model_params),
            fc.SCHEMA_NAME: schema.name,
            fc.N_FEATURES: schema.n_features,
            fc.SCHEMA_SHA256: fc.schema_sha256(schema),
            fc.LOCAL_EPOCHS: run.local_epochs,
        }
    )
    if aggregation == "newton":
        config[fc.PHASE] = fc.PHASE_NEWTON
    initial = to_arrays(models.initial_parameters(family, schema))
    prep, prep_summary = statistics(grid, context, run, schema, config, policy, len(connected))
    config[fc.PREPROCESSING] = json.dumps(prep.to_dict())
    if prep_summary.get("rows"):
        config[fc.FEDERATION_ROWS] = int(prep_summary["rows"])
    public = None if raw_public is None else (prep.transform(raw_public[0], run.public_test), raw_public[1])
    if boosting:
        from fedfhe_coordinator.serverapp.boosting_run import run_boosting  # imports this module

        run_boosting(grid, run, schema, config, policy, prep, public, progress, out_dir,
                     {"started": started, "privacy": privacy_summary(run, len(connected), None),
                      "statistics": prep_summary})
        return

    def score(params: list[np.ndarray]) -> dict[str, float]:
        return score_params(family, model_params, params, schema, *public) if public else {}

    threshold: int | None = None
    if secure:
        from fedfhe_coordinator.serverapp.secure_training import (
            run_secure,  # the legacy API's imports only where a run needs them
        )

        final_arrays, strategy, grid = run_secure(
            grid, context, run, policy=policy, progress=progress, config=config, initial=initial,
            connected=len(connected), score=score,
            newton_run=newton_run(aggregation, family, schema, prep, model_params),
            server_step=(run.server_learning_rate, run.server_momentum) if aggregation == "fedavgm" else None,
        )
        threshold = strategy.threshold
    else:
        strategy = make_strategy(
            aggregation, progress, policy,
            owner_keys=owner_keys,
            node_wait=run.wait_for_nodes,
            min_nodes=min_nodes,
            num_malicious_nodes=run.num_malicious_nodes,
            trimmed_fraction=run.trimmed_fraction,
            multikrum_select=run.multikrum_select,
            server_learning_rate=run.server_learning_rate,
            server_momentum=run.server_momentum,
            model_params=model_params,
        )
        strategy.counter = grid

        def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = score(from_arrays(arrays, family, schema))
            if server_round >= 1:
                entry = strategy.entry(server_round)
                entry["seconds"] = time.time() - entry.get("started", started)
                entry["server"] = metrics
            return MetricRecord(metrics) if metrics else None

        try:
            final_arrays = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=rounds,
                timeout=timeout,
                train_config=config,
                evaluate_fn=on_round,
            ).arrays
        except TrainingStopped as stop:
            assert stop.arrays is not None
            final_arrays = stop.arrays
    stopped = strategy.stopped
    if stopped is not None:
        rounds = stopped.server_round - 1  # the final evaluation scores the model that round made
        strategy.entry(rounds)["stopped"] = str(stopped)
        if stopped.earlier == 1:
            strategy.flush(rounds)
            raise RuntimeError(f"{stopped}; the model it ended with is the initial one (see {progress})")
    if not len(final_arrays):
        raise RuntimeError("no round produced aggregated parameters: every node failed (see progress.jsonl)")
    strategy.learn_names(grid)
    if not secure:
        # A secure run sends no evaluate message: its replies would carry each owner's held-out scores in the
        # clear, which owners refuse in secure runs (fedfhe_owner.clientapp.client_app.evaluate). Its rounds'
        # scores come from the score sums inside the next round's SecAgg+ vector; the final model's would need
        # one more.
        sent, replies = final_evaluation(grid, final_arrays, config, timeout)
        replies, rejected = strategy.screen(rounds, replies, "eval", sent)
        strategy.note_replies(rounds, replies, "eval", sent, rejected)
        strategy.entry(rounds)["clients"] = client_scores([m for m in replies if id(m) not in rejected])
    strategy.flush(rounds)

    coef, intercept = from_arrays(final_arrays, family, schema)
    per_round = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    TrainingArtifact(
        family=family,
        schema=schema,
        coef=coef,
        intercept=intercept,
        model_params=model_params,
        metrics={"rounds": rounds, **({"stopped": str(stopped)} if stopped is not None else {}),
                 "aggregation": {"used": aggregation, "why": why}, "per_round": per_round,
                 "seconds": time.time() - started,
                 "privacy": privacy_summary(run, len(connected), threshold), "statistics": prep_summary},
        origin="federated",
        preprocessing=prep,
    ).save(out_dir / "artifact", mode=0o750)  # the release user (the service's group) copies it out to sign


def newton_run(aggregation: str, family: str, schema: DatasetSchema, prep: Preprocessing,
               model_params: dict[str, Any]) -> Any:
    """What a secure newton run needs to scale the owners' terms (secure_training.NewtonRun); None otherwise."""
    if aggregation != "newton":
        return None
    from fedfhe_coordinator.serverapp.secure_training import NewtonRun

    return NewtonRun(family, schema, model_params, prep.largest_input())


def statistics(grid: Grid, context: Context, run: RunConfig, schema: DatasetSchema, config: ConfigRecord,
               policy: ReplyPolicy, connected: int) -> tuple[Preprocessing, dict[str, Any]]:
    """The preprocessing's statistics from the federation (``statistics_round``), or the identity (legacy schemas)."""
    if not needs_statistics(schema):
        return Preprocessing.identity(schema), {"mode": "none (legacy schema: rows go to the model as they are)"}
    from fedfhe_coordinator.serverapp import statistics_round as sr

    names = node_owners(grid, run.owner_keys)

    def owner_of(node: int) -> str:
        return names.get(int(node), f"node-{int(node)}")

    try:
        if run.secure_aggregation:
            from fedfhe_coordinator.serverapp.secure_training import resolve_shares

            shares, threshold = resolve_shares(run.secagg_num_shares, run.secagg_reconstruction_threshold, connected)
            return sr.secure_statistics(grid, context, run, schema, config, shares=shares, threshold=threshold,
                                        owner_of=owner_of)
        return sr.plain_statistics(grid, schema, config, min_nodes=run.min_nodes, timeout=run.round_timeout,
                                   cap=policy.cap, owner_of=owner_of)
    except sr.StatisticsFailed as exc:
        raise NodesLost(str(exc)) from None
