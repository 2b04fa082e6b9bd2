"""A registered but hostile data owner in a real federation (issue 11): refused every round, the run completes.

Runs after the other users of the shared `fed` federation (it adds a SuperNode to it):
owner-hostile's ClientApp claims 1e12 rows for coefficients x -100 and names
itself owner-0. Without the reply checks FedAvg would make its coefficients the
global model; with them the run finishes, each round names owner-hostile (from
its registered key) as failed with the reason, and the model is the honest one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml.data import load_table
from fedfhe_common.pki.ca import issue, supernode_keypair
from fedfhe_common.runtime.procs import wait_until
from fedfhe_coordinator.train import flwr_cli
from fedfhe_coordinator.train.training import run_training

pytestmark = pytest.mark.timeout(600)


def online(cfg) -> int:
    return sum(1 for n in flwr_cli.registered_keys(cfg) if n.get("status") == "online")


def test_hostile_owner_is_refused_and_the_run_completes(fed, first_run):
    c, data = fed["cluster"], fed["data"]
    issue(c.pki, "owner-hostile", client=True)
    supernode_keypair(c.pki, "owner-hostile")
    key = c.pki / "owner-hostile.supernode.pub"
    cfg = dataclasses.replace(fed["cfg"], supernode_public_keys=[*fed["cfg"].supernode_public_keys, key])
    before = online(cfg)
    c.register(fed["cfg_path"], keys=[key])
    hostile = c.start_supernode(
        "owner-hostile", c.owner_config("owner-hostile", data / "owner-0.npz", test_hostile_reply="inflated-weight"))
    try:
        wait_until(lambda: online(cfg) > before, 90, "owner-hostile's SuperNode to come online", interval=1.0)
        rows: list[dict] = []
        artifact = run_training(cfg, {"num-server-rounds": 2}, on_round=rows.append)
    finally:
        c.stop(hostile)
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert "owner-hostile" not in r["fit_owners"] and "owner-0" in r["fit_owners"]
        (refused,) = [f for f in r["failures"] if f["owner"] == "owner-hostile" and f["phase"] == "fit"]
        assert refused["reason"] == ("reply refused: metric num-examples is 1000000000000, "
                                     "above this owner's cap of 1000000")
    # The last round's evaluate reply claims 1e12 held-out rows too: refused, and the scores are the honest ones.
    assert any(f["phase"] == "eval" and f["owner"] == "owner-hostile" for f in rows[-1]["failures"])
    X_test, y_test = load_table(data / "public-test.npz", DIGITS)
    honest, _ = first_run
    accuracy = artifact.to_estimator().score(X_test, y_test)
    assert accuracy >= honest.to_estimator().score(X_test, y_test) - 0.03
    assert np.linalg.norm(artifact.coef) < 3 * np.linalg.norm(honest.coef)
