"""What every ServerApp run shares: the round recording, reply policy, node waits and run-ending errors.

Kept apart from server_app (the app and its main) so the plain, secure and boosting runs import it
at module level and server_app imports them: no import cycle (issue 28).
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
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Error
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import newton
from fedfhe_coordinator.aggregation import strategy_class, strategy_kwargs
from fedfhe_coordinator.serverapp.wire_bytes import CountingGrid


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
