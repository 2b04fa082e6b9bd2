"""The statistics round: before training, the federation computes what the schema's preprocessing needs.

Means and standard deviations for scaling, means and modes for gaps: each owner
sends fractions over its own rows (``preprocessing.moments``), never a row, and
the coordinator keeps only their row-weighted average. In a plain run that
average is taken here over checked replies (FedAvg's rule); in a secure run the
vectors go through Flower's SecAgg+ like any update, so the coordinator only
ever holds the masked vectors and their sum.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.preprocessing import SECURE_SUM_TOLERANCE, Preprocessing, check_moments
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.secure_training import StageGrid, secagg_workflow


class StatisticsFailed(RuntimeError):
    """Too few owners sent usable statistics: the run stops naming them."""


def statistics_config(config: ConfigRecord) -> ConfigRecord:
    return ConfigRecord(dict(config) | {fc.PHASE: fc.PHASE_STATISTICS})


def plain_statistics(grid: Grid, schema: DatasetSchema, config: ConfigRecord, *, min_nodes: int, timeout: float,
                     cap: Any, owner_of: Any) -> tuple[Preprocessing, dict[str, Any]]:
    """One message per owner; every reply checked (``fl_contract.check_statistics_reply``) before it counts."""
    nodes = list(grid.get_node_ids())
    messages = [Message(content=RecordDict({fc.CONFIG: statistics_config(config)}), dst_node_id=node,
                        message_type=MessageType.TRAIN) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    dst = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
    total = np.zeros(3 * schema.n_features)
    rows = 0
    owners: list[str] = []
    failures: list[str] = []
    for reply in replies:
        owner = owner_of(dst.get(reply.metadata.reply_to_message_id, int(reply.metadata.src_node_id)))
        if reply.has_error():
            failures.append(f"{owner} ({fc.owner_text(reply.error.reason, 300)})")
            continue
        try:
            vector, n = fc.check_statistics_reply(reply.content, schema, cap(owner))
        except fc.ReplyRejected as exc:
            failures.append(f"{owner} (statistics refused: {fc.owner_text(exc)})")
            continue
        total += n * vector
        rows += n
        owners.append(owner)
    if len(owners) < min_nodes:
        silent = len(nodes) - len(owners) - len(failures)
        raise StatisticsFailed(
            f"statistics round: {len(owners)} owner(s) sent usable statistics, the run needs {min_nodes}"
            + (f"; failed: {', '.join(sorted(failures))}" if failures else "")
            + (f"; {silent} sent nothing within the round timeout" if silent > 0 else ""))
    summary = {"mode": "plain", "owners": sorted(owners), "rows": rows, "failures": sorted(failures)}
    return Preprocessing.from_moments(schema, total / rows), summary


class StatisticsStrategy(Strategy):
    """The legacy strategy SecAgg+ hands the unmasked average to: one round, no model, no evaluation."""

    def __init__(self, schema: DatasetSchema, config: ConfigRecord, min_nodes: int, node_wait: float,
                 max_weight: float) -> None:
        self.schema = schema
        self.config = statistics_config(config)
        self.min_nodes = min_nodes
        self.node_wait = node_wait
        self.max_weight = max_weight
        self.average: np.ndarray | None = None
        self.owners = 0
        self.rows = 0
        self.refused: list[str] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters([np.zeros(3 * self.schema.n_features)])

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        deadline = time.monotonic() + self.node_wait
        while client_manager.num_available() < self.min_nodes:
            if time.monotonic() > deadline:
                raise StatisticsFailed(f"statistics round: only {client_manager.num_available()} SuperNode(s) "
                                       f"connected after {self.node_wait:.0f}s, the run needs {self.min_nodes}")
            time.sleep(0.5)
        clients = client_manager.sample(client_manager.num_available(), min_num_clients=self.min_nodes)
        ins = FitIns(parameters, cast(dict[str, Scalar], dict(self.config) | {fc.SERVER_ROUND: 0}))
        return [(c, ins) for c in clients]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        for _, res in results:
            metrics = dict(res.metrics)
            try:
                if set(metrics) != {fc.NUM_EXAMPLES} or int(res.num_examples) != metrics[fc.NUM_EXAMPLES]:
                    raise fc.ReplyRejected("a statistics reply's metrics are exactly its weight (num-examples)")
                fc.check_rows(metrics[fc.NUM_EXAMPLES], int(self.max_weight))
            except (fc.ReplyRejected, ValueError) as exc:
                self.refused.append(str(exc))
        if self.refused or not results:
            return None, {}
        try:  # SecAgg+ hands every result the same unmasked, row-weighted average
            self.average = check_moments(parameters_to_ndarrays(results[0][1].parameters)[0], self.schema,
                                         SECURE_SUM_TOLERANCE)
        except (ValueError, IndexError) as exc:
            self.refused.append(f"the unmasked average broke the contract: {exc}")
            return None, {}
        self.owners = len(results)
        self.rows = sum(int(res.num_examples) for _, res in results)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def secure_statistics(grid: Grid, context: Context, run: RunConfig, schema: DatasetSchema, config: ConfigRecord, *,
                      shares: int | float, threshold: int, owner_of: Any) -> tuple[Preprocessing, dict[str, Any]]:
    """One SecAgg+ round whose 'update' is each owner's statistics vector (every entry in [0, 1]).

    Test runs (run config ``test-record-dir``) keep each masked vector the coordinator
    received under ``statistics/``, as the training rounds keep theirs.
    """
    record_dir, timeout = run.test_record_dir, run.round_timeout
    grid = StageGrid(grid, owner_of, str(Path(record_dir) / "statistics") if record_dir else "")
    strategy = StatisticsStrategy(schema, config, run.min_nodes, run.wait_for_nodes, run.secagg_max_weight)
    workflow = secagg_workflow(run, shares, threshold)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=1, round_timeout=timeout),
                           strategy=strategy, client_manager=SimpleClientManager())
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    if strategy.average is None:
        why = "; ".join(strategy.refused) or "fewer owners answered than its reconstruction threshold " \
                                             f"({threshold}); see the ServerApp log"
        raise StatisticsFailed(f"statistics round (secure aggregation): no usable sum: {why}")
    summary = {"mode": "secure-aggregation", "owners_in_sum": strategy.owners, "rows": strategy.rows}
    return Preprocessing.from_moments(schema, strategy.average), summary
