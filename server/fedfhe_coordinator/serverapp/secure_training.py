"""Secure mode of the ServerApp: Flower's SecAgg+ so the coordinator learns only the sum of the owners' updates.

Flower 1.39 has SecAgg+ only in its legacy API, so a secure run is a
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a ``LegacyContext``
whose strategy is ``SecureRecorder``: it keeps the round table and progress.jsonl
as a plain run does (answered, missing and failed owners, named from their
registered keys), and hands the unmasked sum to Flower's legacy FedAvg, wrapped
in Flower's ``DifferentialPrivacyClientSideFixedClipping`` when the run adds DP.

What the coordinator can no longer check: one owner's parameters (it only ever
holds them masked). What it still checks: each reply's clear metrics (its weight
and fit seconds, nothing else) and weight against the contract, and the unmasked
average's shapes and values.

Held-out scores: each owner appends its scores to the vector it masks
(fedfhe_common.ml.score_sums); the recorder splits them off the unmasked aggregate
and records only the federation's row-weighted scores. ``training.aggregation:
fedavgm`` takes Flower's FedAvgM server step on the (DP-noised, if any) average.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedAvgM, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import newton, score_sums, secure_target
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.rounds import NodesLost, OwnersChanged, Recording, ReplyPolicy, TrainingStopped
from fedfhe_coordinator.serverapp.wire_bytes import CountingGrid

STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)
GONE = (int(ErrorCode.NODE_UNAVAILABLE), int(ErrorCode.MESSAGE_UNAVAILABLE))


def resolve_shares(num_shares: int, threshold: int, owners: int) -> tuple[int | float, int]:
    """Flower's (num_shares, reconstruction_threshold) for a run that starts with ``owners`` owners.

    0 shares means every owner of the round (Flower's proportion 1.0); threshold 0
    a strict majority of the shares, which is what owners accept.
    """
    shares: int | float = num_shares if num_shares >= 3 else 1.0
    count = min(num_shares, owners) if num_shares >= 3 else owners
    return shares, threshold if threshold >= 2 else count // 2 + 1


class StageGrid(CountingGrid):
    """The grid SecAgg+ talks through: records who was sent, who answered and who failed, per round and stage.

    SecAggPlusWorkflow keeps no per-owner account (its failures are bare
    exceptions); the round table needs one. ``record_dir`` (test runs only)
    keeps each owner's masked vector as the coordinator received it.
    """

    def __init__(self, inner: Grid, owner_of: Callable[[int], str], record_dir: str = "") -> None:
        super().__init__(inner)
        self.owner_of = owner_of
        self.record_dir = Path(record_dir) if record_dir else None
        self.log: dict[int, dict[str, dict[str, Any]]] = {}

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        stage = _stage(messages[0]) if messages else ""
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if not stage:
            return replies
        server_round = int(messages[0].metadata.group_id or 0)
        dst = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
        entry = {"sent": sorted(dst.values()), "ok": [], "failed": {}, "gone": {}}
        for r in replies:
            node = dst.get(r.metadata.reply_to_message_id, int(r.metadata.src_node_id))
            if not r.has_error():
                entry["ok"].append(node)
                if stage == Stage.COLLECT_MASKED_VECTORS:
                    self._record(server_round, node, r)
            elif int(r.error.code) in GONE:
                entry["gone"][node] = fc.owner_text(r.error.reason)
            else:
                entry["failed"][node] = fc.owner_text(r.error.reason)
        self.log.setdefault(server_round, {})[stage] = entry
        return replies

    def _record(self, server_round: int, node: int, reply: Message) -> None:
        if self.record_dir is None:
            return
        masked = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        self.record_dir.mkdir(parents=True, exist_ok=True)
        np.savez(self.record_dir / f"masked-{self.owner_of(node)}-round{server_round}.npz",
                 **{f"p{i}": bytes_to_ndarray(b) for i, b in enumerate(cast(list[bytes], masked))})


def _stage(message: Message) -> str:
    try:
        return str(message.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
    except KeyError:
        return ""


@dataclass
class NewtonRun:
    """A secure newton run: owners' terms scaled into SecAgg+'s clipping range, the step taken on their sum.

    Each round both sides bound what an honest owner's gradient, Hessian and loss
    can be at the model sent (newton.term_bounds, from the inputs' bounds after the
    preprocessing and a regressor's target bounds); owners scale each array by
    range / bound, so nothing honest is clipped and each array keeps the precision
    of the range, and the coordinator divides the factors out of the sum.
    """

    family: str
    schema: Any
    model_params: dict[str, Any]
    input_bound: float
    stepper: newton.Stepper | None = None
    scales: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stepper = newton.Stepper(self.schema.n_features)

    def round_scales(self, server_round: int, params: list[np.ndarray], clipping_range: float) -> list[float]:
        """The factors every owner applies this round (newton.term_scales: computed on both sides, never sent)."""
        w = newton.flatten(params, self.family, self.schema)
        self.scales[server_round] = newton.term_scales(self.family, self.schema, w, self.input_bound, clipping_range)
        return self.scales[server_round]

    def step(self, server_round: int, sent: list[np.ndarray], averaged: list[np.ndarray], rows: int,
             quantum: float) -> list[np.ndarray]:
        """The next model from the unmasked average (still scaled); ``quantum``: its rounding per entry, scaled."""
        scales = self.scales[server_round]
        terms = fc.check_newton_terms(averaged, self.family, self.schema, convex=False)
        loss, grad, hess = fc.unpack_newton([t / s for t, s in zip(terms, scales, strict=True)])
        assert self.stepper is not None
        w = newton.flatten(sent, self.family, self.schema)
        stepped = self.stepper.step(
            w, loss, grad, hess, newton.penalty_strength(self.family, self.model_params, rows),
            hess_tolerance=len(w) * quantum / scales[1], loss_tolerance=2.0 * quantum / scales[2])
        return to_arrays(newton.unflatten(stepped, self.family, self.schema)).to_numpy_ndarrays()


class SecureRecorder(Recording, Strategy):
    """The legacy strategy SecAgg+ reports to: fedfhe's round table around Flower's FedAvg (or its DP wrapper).

    ``configure_fit`` waits (with a deadline) for ``min_nodes`` owners and samples
    them all; ``aggregate_fit`` receives the unmasked average (Flower hands the
    same aggregate as every owner's parameters), checks each owner's clear metrics
    and weight, splits the held-out score sums off it, and passes the rest on
    without the workflow's anonymous failures (the round table names them;
    Flower's DP wrapper would drop the round for any). ``server_opt`` (aggregation
    fedavgm): Flower's FedAvgM, fed the one averaged result to take its server step.
    """

    def __init__(
        self, progress: Path, policy: ReplyPolicy, owner_keys: dict[str, str], node_wait: float, *,
        inner: Strategy, min_nodes: int, max_weight: float, threshold: int,
        score: Callable[[list[np.ndarray]], dict[str, float]], record_dir: str = "",
        newton_run: NewtonRun | None = None, clipping_range: float = 0.0, quantization_range: int = 0,
        server_opt: FedAvgM | None = None,
    ) -> None:
        super().__init__(progress, policy, owner_keys=owner_keys, node_wait=node_wait)
        self.inner = inner
        self.min_available_nodes = self.min_train_nodes = min_nodes
        self.max_weight = max_weight
        self.threshold = threshold
        self.score = score
        self.record_dir = Path(record_dir) if record_dir else None
        self.grid: StageGrid | None = None
        self.started = time.time()
        self.newton = newton_run
        self.clipping_range = clipping_range
        self.quantization_range = quantization_range
        self.server_opt = server_opt

    # ---- Flower's legacy Strategy ------------------------------------------
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self.note_model(server_round, parameters_to_ndarrays(parameters))
        self.entry(server_round)["started"] = time.time()
        self.count_round(server_round)
        if self.grid is not None:
            self.learn_names(self.grid)
        deadline = time.monotonic() + self.node_wait
        while client_manager.num_available() < self.min_available_nodes:
            if time.monotonic() > deadline:
                entry = self.entry(server_round)
                entry["error"] = (
                    f"round {server_round}: only {client_manager.num_available()} SuperNode(s) connected after "
                    f"waiting {self.node_wait:.0f}s, the run needs {self.min_available_nodes}"
                )
                self.flush(server_round - 1)
                self.flush(server_round)
                raise NodesLost(entry["error"])
            time.sleep(0.5)
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        sent = self.global_params.get(server_round)
        if self.newton is not None and sent is not None:
            self.newton.round_scales(server_round, sent, self.clipping_range)
        return instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        entry = self.note_stages(server_round)
        refused = False
        seconds: list[float] = []
        for proxy, res in results:
            owner = self.owner_of(proxy.node_id)
            try:
                # A secure reply's clear metrics are its weight and fit seconds: a held-out score here is refused.
                metrics = fc.check_metrics(dict(res.metrics), "secure-train", self.policy.schema,
                                           min(self.policy.cap(owner), int(self.max_weight)))
                if int(res.num_examples) != metrics[fc.NUM_EXAMPLES]:
                    raise fc.ReplyRejected(f"weight {res.num_examples} differs from num-examples "
                                           f"{metrics[fc.NUM_EXAMPLES]}")
                seconds.append(float(metrics[fc.FIT_SECONDS]))
            except fc.ReplyRejected as exc:
                refused = True
                entry["failures"].append({"phase": "fit", "node_id": int(proxy.node_id), "owner": owner,
                                          "reason": f"reply refused: {fc.owner_text(exc)}; its masked update is "
                                                    "inside the sum, so this round's sum is dropped"})
        entry["fit_seconds_max"] = max(seconds, default=0.0)
        split, broken = self._split(results)
        self._record_received(server_round, results, split)
        self.entry(server_round - 1)["clients"] = {} if refused or split is None else self._scores(
            server_round, results, split[1])
        self.flush(server_round - 1)
        if len(entry["fit_owners"]) < self.min_train_nodes:
            entry["error"] = self.shortfall(server_round)
            self.flush(server_round)
            raise NodesLost(entry["error"])
        entry["aggregated"] = True
        if refused:
            return None, {}
        if split is None:
            entry["failures"].append({"phase": "fit", "node_id": 0, "owner": "(sum)",
                                      "reason": f"the unmasked sum broke the contract and was dropped: {broken}"})
            return None, {}
        model = ndarrays_to_parameters(split[0])
        for _, res in results:  # Flower's FedAvg (or DP wrapper) averages the model part only
            res.parameters = model
        params, metrics = self.inner.aggregate_fit(server_round, results, [])
        if params is None:
            return None, {}
        try:
            if self.newton is not None:
                params = ndarrays_to_parameters(self._newton_step(server_round, parameters_to_ndarrays(params),
                                                                  results))
            elif self.server_opt is not None:
                params = self._server_step(server_round, params, results[0][0])
            fc.check_params(parameters_to_ndarrays(params), self.policy.family, self.policy.schema)
        except (fc.ReplyRejected, newton.NotConvex) as exc:
            entry["failures"].append({"phase": "fit", "node_id": 0, "owner": "(sum)",
                                      "reason": f"the unmasked sum broke the contract and was dropped: {exc}"})
            return None, {}
        return params, metrics

    def _split(self, results: list[tuple[ClientProxy, FitRes]]
               ) -> tuple[tuple[list[np.ndarray], np.ndarray] | None, str]:
        """(model or newton arrays, score sums) of the unmasked aggregate, or None and why it breaks the contract."""
        if not results:
            return None, "no result"
        arrays = 3 if self.newton is not None else len(fc.wire_shapes(self.policy.family, self.policy.schema))
        try:
            return fc.split_score_sums(parameters_to_ndarrays(results[0][1].parameters), arrays,
                                       self.policy.schema), ""
        except fc.ReplyRejected as exc:
            return None, str(exc)

    def _scores(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                average: np.ndarray) -> dict[str, float]:
        """The federation's held-out scores of the model the previous round made, from the unmasked average.

        SecAggPlusWorkflow divided the sum by the owners' weight factors added up; multiplying that
        back gives the sum of the owners' arrays (fedfhe_common.ml.score_sums). A sum no honest owners
        make is this round's failure, and the scores are left out (the model is not affected).
        """
        weights = [int(res.num_examples) for _, res in results]
        total = score_sums.total_factor(weights, self.max_weight, self.quantization_range)
        try:
            return score_sums.unpack(average * total, fc.score_names(self.policy.schema), len(results),
                                     self.max_weight, self.clipping_range, self.quantization_range)
        except ValueError as exc:
            self.entry(server_round)["failures"].append(
                {"phase": "fit", "node_id": 0, "owner": "(score sums)",
                 "reason": f"the held-out score sums were not recorded: {exc}"})
            return {}

    def _server_step(self, server_round: int, averaged: Parameters, proxy: ClientProxy) -> Parameters:
        """Flower's FedAvgM on the secure average: its server step (learning rate, momentum) from the model sent.

        FedAvgM acts on the average only, so it is fed that one result (weight 1: FedAvg of one is itself),
        after the DP wrapper's noise when the run has central DP (the step is then post-processing of the
        noisy average). Its ``initial_parameters`` (its current model) is set to the model this round sent,
        and its momentum starts at zero if no earlier round made one (Flower creates it in round 1 only).
        """
        assert self.server_opt is not None
        sent = self.global_params.get(server_round)
        if sent is None:
            raise fc.ReplyRejected("this round's global model broke the contract: no server step from it")
        wire = to_arrays(sent).to_numpy_ndarrays()
        self.server_opt.initial_parameters = ndarrays_to_parameters(wire)
        if self.server_opt.server_momentum > 0 and self.server_opt.momentum_vector is None:
            self.server_opt.momentum_vector = [np.zeros_like(a) for a in wire]
        stepped, _ = self.server_opt.aggregate_fit(server_round, [(proxy, FitRes(Status(Code.OK, ""), averaged, 1,
                                                                                 {}))], [])
        if stepped is None:
            raise fc.ReplyRejected("FedAvgM made no model from the average")
        return stepped

    def _newton_step(self, server_round: int, averaged: list[np.ndarray],
                     results: list[tuple[ClientProxy, FitRes]]) -> list[np.ndarray]:
        """Newton's step from the unmasked average of the owners' scaled terms.

        Flower quantises each owner's terms times weight / max_weight in steps of
        2 x range / quantization_range and divides the sum by the weights' sum: that
        bounds the rounding of each averaged entry (``quantum``).
        """
        assert self.newton is not None
        sent = self.global_params[server_round]
        weights = [int(res.num_examples) for _, res in results]
        ratios = sum(w / self.max_weight for w in weights)
        quantum = 2.0 * self.clipping_range / max(1, self.quantization_range) * len(weights) / max(ratios, 1e-12)
        stepped = self.newton.step(server_round, sent, averaged, sum(weights), quantum)
        assert self.newton.stepper is not None
        self.entry(server_round)["newton"] = self.newton.stepper.log[-1]
        return stepped

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # owners score the global model inside the next train message

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        params = fc.check_params(parameters_to_ndarrays(parameters), self.policy.family, self.policy.schema)
        metrics = self.score(params)
        if server_round >= 1:
            entry = self.entry(server_round)
            entry["seconds"] = time.time() - entry.get("started", self.started)
            entry["server"] = metrics
        return (float(metrics.get("loss", 0.0)), dict(metrics)) if metrics else None

    # ---- the round table ---------------------------------------------------
    def note_stages(self, server_round: int) -> dict[str, Any]:
        """Answered, missing and failed owners of a round, from what each SecAgg+ stage got back.

        An owner counts as trained when its masked vector arrived (it is in the
        sum); one that failed or fell silent in any stage is listed once, at the
        first stage where it did.
        """
        entry = self.entry(server_round)
        log = self.grid.log.get(server_round, {}) if self.grid is not None else {}
        sampled = log.get(Stage.SETUP, {}).get("sent", [])
        trained = log.get(Stage.COLLECT_MASKED_VECTORS, {}).get("ok", [])
        entry["fit_nodes"] = len(trained)
        entry["fit_owners"] = sorted(self.owner_of(n) for n in trained)
        entry["failures"] = [f for f in entry["failures"] if f.get("stage") is None]
        entry["missing"] = []
        seen: set[int] = set()
        for stage in STAGES:
            if stage not in log:
                break
            info = log[stage]
            for node in info["sent"]:
                if node in seen or node in info["ok"]:
                    continue
                seen.add(node)
                row = {"phase": "fit", "stage": stage, "node_id": node, "owner": self.owner_of(node)}
                if node in info["failed"]:
                    entry["failures"].append(row | {"reason": f"SecAgg+ {stage}: {info['failed'][node]}"})
                else:
                    reason = info["gone"].get(node, f"no reply to SecAgg+ {stage} within the round timeout")
                    entry["missing"].append(row | {"reason": reason})
        lost = sorted(set(sampled) - set(log.get(Stage.SETUP, {}).get("ok", [])) - seen)
        for node in lost:
            entry["missing"].append({"phase": "fit", "stage": Stage.SETUP, "node_id": node,
                                     "owner": self.owner_of(node), "reason": "no reply"})
        return entry

    def halted(self, server_round: int) -> str:
        """Why SecAgg+ stopped a round (it returns without a word when too few owners remain)."""
        entry = self.note_stages(server_round)
        lost = sorted({m["owner"] for m in entry["missing"]} | {f["owner"] for f in entry["failures"]})
        parts = [f"round {server_round}: secure aggregation stopped: fewer owners left than its reconstruction "
                 f"threshold ({self.threshold})"]
        if entry["missing"]:
            parts.append(f"no reply from {', '.join(sorted({m['owner'] for m in entry['missing']}))}")
        failed = sorted({f"{f['owner']} ({f['reason'][:300]})" for f in entry["failures"]})
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
        if not lost:
            parts.append("no owner was lost (see the ServerApp log)")
        return "; ".join(parts) + f" (see {self.progress})"

    def _record_received(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                         split: tuple[list[np.ndarray], np.ndarray] | None) -> None:
        """Test runs only: what this strategy received as each owner's parameters (the model part as ``p*``,
        the score sums as ``scores``) and clear metrics (``metrics``, JSON)."""
        if self.record_dir is None:
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        for proxy, res in results:
            arrays, sums = split if split is not None else (parameters_to_ndarrays(res.parameters), np.zeros(0))
            np.savez(self.record_dir / f"strategy-{self.owner_of(proxy.node_id)}-round{server_round}.npz",
                     weight=np.array(res.num_examples), scores=sums, metrics=np.array(json.dumps(dict(res.metrics))),
                     **{f"p{i}": a for i, a in enumerate(arrays)})


class CheckedSecAgg:
    """The fit workflow: Flower's SecAggPlusWorkflow, then a clear failure if it stopped the round.

    SecAggPlusWorkflow returns silently when too few owners remain for the
    threshold, and DefaultWorkflow would go on with the old model; a run must
    instead fail naming the owners that were lost.
    """

    def __init__(self, workflow: SecAggPlusWorkflow, recorder: SecureRecorder) -> None:
        self.workflow = workflow
        self.recorder = recorder

    def __call__(self, grid: Grid, context: Context) -> None:
        server_round = int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))
        self.workflow(grid, context)
        entry = self.recorder.entry(server_round)
        if not entry.get("aggregated"):
            entry["error"] = self.recorder.halted(server_round)
            self.recorder.flush(server_round - 1)
            self.recorder.flush(server_round)
            refused = [f for f in entry["failures"]
                       if fc.REFUSED_OTHER_OWNERS in f["reason"] or fc.REFUSED_FEW_OWNERS in f["reason"]]
            if refused and server_round > 1:
                lost = sorted({m["owner"] for m in entry["missing"]}) or ["see the round's failures"]
                self.recorder.stopped = OwnersChanged(server_round, f"lost: {', '.join(lost)}")
                raise self.recorder.stopped
            raise NodesLost(entry["error"])


def secagg_workflow(run: RunConfig, shares: int | float, threshold: int) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the run's clipping, quantisation and weight bounds (owners check the same)."""
    return SecAggPlusWorkflow(
        num_shares=shares, reconstruction_threshold=threshold, max_weight=run.secagg_max_weight,
        clipping_range=run.secagg_clipping_range, quantization_range=run.secagg_quantization_range,
        timeout=run.round_timeout,
    )


def run_secure(
    grid: Grid, context: Context, run: RunConfig, *, policy: ReplyPolicy, progress: Path, config: ConfigRecord,
    initial: ArrayRecord, connected: int, score: Callable[[list[np.ndarray]], dict[str, float]],
    newton_run: NewtonRun | None = None, server_step: tuple[float, float] | None = None,
) -> tuple[ArrayRecord, SecureRecorder, Grid]:
    """Run ``run.num_server_rounds`` SecAgg+ rounds; the final global parameters, the recorder and the grid used.

    ``server_step``: (server_learning_rate, server_momentum) of aggregation fedavgm, taken by Flower's
    FedAvgM on each round's secure average.
    """
    if newton_run is None:  # a regressor's parameters travel in units of its target's range (secure_target)
        initial = to_arrays(secure_target.to_wire(policy.schema, initial.to_numpy_ndarrays()))
        real_score = score

        def score(params: list[np.ndarray]) -> dict[str, float]:
            return real_score(secure_target.from_wire(policy.schema, params))
    record_dir, min_nodes = run.test_record_dir, run.min_nodes
    shares, threshold = resolve_shares(run.secagg_num_shares, run.secagg_reconstruction_threshold, connected)
    train_config = {k: v for k, v in dict(config).items()}

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return cast(dict[str, Scalar], train_config | {fc.SERVER_ROUND: server_round})

    inner: Strategy = FedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=min_nodes, min_evaluate_clients=min_nodes,
        min_available_clients=min_nodes, on_fit_config_fn=fit_config,
        initial_parameters=ndarrays_to_parameters(initial.to_numpy_ndarrays()),
    )
    if run.dp_noise_multiplier > 0:
        inner = DifferentialPrivacyClientSideFixedClipping(
            inner, noise_multiplier=run.dp_noise_multiplier, clipping_norm=run.dp_clipping_norm,
            num_sampled_clients=connected,
        )
    server_opt = None
    if server_step is not None:
        server_opt = FedAvgM(server_learning_rate=server_step[0], server_momentum=server_step[1],
                             fit_metrics_aggregation_fn=lambda metrics: {})
    recorder = SecureRecorder(progress, policy, run.owner_keys, run.wait_for_nodes, inner=inner, min_nodes=min_nodes,
                              max_weight=run.secagg_max_weight, threshold=threshold, score=score,
                              record_dir=record_dir, newton_run=newton_run, clipping_range=run.secagg_clipping_range,
                              quantization_range=run.secagg_quantization_range, server_opt=server_opt)
    stage_grid = StageGrid(grid, recorder.owner_of, record_dir)
    recorder.grid = recorder.counter = stage_grid
    recorder.learn_names(stage_grid)
    workflow = secagg_workflow(run, shares, threshold)
    legacy = LegacyContext(context, ServerConfig(num_rounds=run.num_server_rounds, round_timeout=run.round_timeout),
                           strategy=recorder, client_manager=SimpleClientManager())
    try:
        DefaultWorkflow(fit_workflow=CheckedSecAgg(workflow, recorder))(stage_grid, legacy)
    except TrainingStopped:
        pass  # recorder.stopped says where; Flower's state holds the model the last round made
    final = legacy.state.array_records[MAIN_PARAMS_RECORD]
    if newton_run is None and len(final):
        final = to_arrays(secure_target.from_wire(policy.schema, final.to_numpy_ndarrays()))
    return final, recorder, stage_grid

