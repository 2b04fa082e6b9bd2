"""A run with training.aggregation fedavgm on the shared federation (issue 14): Flower's FedAvgM aggregates it.

The setting goes through coordinator.yaml's checks (a dataclasses.replace of the
loaded config runs them again), the run config and the ServerApp, as `train` does.
"""

from __future__ import annotations

import dataclasses

import pytest

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml.data import load_table
from fedfhe_coordinator.train.training import run_training

pytestmark = pytest.mark.timeout(300)


def test_a_fedavgm_run_completes_with_server_momentum(fed):
    cfg = fed["cfg"]
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, aggregation="fedavgm",
                                                                server_momentum=0.9))
    rows: list[dict] = []
    artifact = run_training(cfg, {"num-server-rounds": 2}, on_round=rows.append)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(len(r["fit_owners"]) >= 3 for r in rows)
    log = (cfg.state_dir / "flwr-run.log").read_text(errors="replace")
    assert "FedAvgM settings" in log and "Server Momentum: 0.9" in log, log[-2000:]
    X_test, y_test = load_table(fed["data"] / "public-test.npz", DIGITS)
    assert artifact.to_estimator().score(X_test, y_test) >= 0.85
