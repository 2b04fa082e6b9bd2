"""The running servers loopback tests share: one inference node with its owners, and one federation.

The node (``node``, owners ``alice`` and ``bob``) serves digits-lr versions 1 and 2
for the whole session. Starting flower-superlink and the SuperNodes costs most of
the federation tests' time, so test_federation.py and test_pinned_app.py run
against the same processes (``fed``): three good owners, one with a bad data file,
one unregistered and one without the CA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from inference_support import Digits, Node, Owner, make_owner, start_node

from fedfhe_common.pki.ca import init_ca, supernode_keypair
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.train.training import run_training
from fedfhe_testbed.cluster import Cluster
from fedfhe_testbed.partition_cli import write_partitions

OWNERS = ["owner-0", "owner-1", "owner-2"]


@pytest.fixture(scope="package")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("fed")
    data = work / "data"
    write_partitions("digits", 3, data, scheme="iid", seed=0)
    (data / "bad.csv").write_text("f0,label\n1,0\n")  # wrong column count for digits
    with Cluster(work, secure=False) as c:
        c.make_pki(OWNERS + ["owner-bad", "intruder"])
        cfg_path = c.coordinator_config(
            OWNERS + ["owner-bad"], rounds=3, min_nodes=3, public_test=str(data / "public-test.npz"),
            wait_for_nodes_s=90.0,
        )
        c.start_superlink(cfg_path)
        cfg = coord.load(cfg_path)
        c.register(cfg_path)
        for i, owner in enumerate(OWNERS):
            c.start_supernode(owner, c.owner_config(owner, data / f"owner-{i}.npz"))
        bad = c.start_supernode("owner-bad", c.owner_config("owner-bad", data / "bad.csv"))
        # Not registered with the SuperLink: its key is unknown.
        intruder = c.start_supernode("intruder", c.owner_config("intruder", data / "owner-0.npz"))
        # A second CA: this SuperNode cannot verify the SuperLink's certificate.
        other = work / "other-pki"
        init_ca(other)
        supernode_keypair(c.pki, "no-ca")
        no_ca_cfg = c.owner_config("no-ca", data / "owner-0.npz", root_certificates=str(other / "ca.crt"))
        no_ca = c.start_supernode("no-ca", no_ca_cfg)
        yield {"cluster": c, "cfg": cfg, "cfg_path": cfg_path, "work": work, "data": data, "bad": bad,
               "intruder": intruder, "no_ca": no_ca}


@pytest.fixture(scope="package")
def first_run(fed):
    rows: list[dict] = []
    artifact = run_training(fed["cfg"], on_round=rows.append)
    return artifact, rows


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Path, lr_bundles: dict[str, Any]) -> Any:
    """One node for the session, serving digits-lr versions 1 and 2."""
    n = start_node(tmp_path_factory.mktemp("node"), pki, (lr_bundles["1"].directory, lr_bundles["2"].directory))
    yield n
    n.stop()


@pytest.fixture(scope="session")
def alice(node: Node, digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    return make_owner(node, "alice", tmp_path_factory.mktemp("alice-state"), digits.X_test,
                      versions=("1", "2"), rows=2)


@pytest.fixture(scope="session")
def bob(node: Node, digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    return make_owner(node, "bob", tmp_path_factory.mktemp("bob-state"), digits.X_test,
                      versions=("1", "2"), rows=2)
