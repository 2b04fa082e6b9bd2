"""A revoked owner's SuperNode key leaves the SuperLink: `fedfhe-coordinator register` reconciles with the config.

One SuperLink, no SuperNode and no run: two owners registered, then owner-1's
key taken out of supernode_public_keys and register run again; its node is
unregistered (so flower-supernode with that key can join no run), owner-0's stays.
"""

from __future__ import annotations

import subprocess

import pytest
from reliability_helpers import reap_group

from fedfhe_common.pki.ca import revoke, write_crl
from fedfhe_common.runtime.procs import venv_bin
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.train import flwr_cli
from fedfhe_owner.server_certificate import refuse_if_revoked
from fedfhe_testbed.cluster import Cluster

pytestmark = pytest.mark.timeout(300)


def test_register_unregisters_a_key_no_longer_listed(tmp_path):
    with Cluster(tmp_path, secure=False) as c:
        c.make_pki(["owner-0", "owner-1"])
        both = c.coordinator_config(["owner-0", "owner-1"])
        superlink = c.start_superlink(both)
        try:
            c.register(both)
            cfg = coord.load(both)
            nodes = {n["node-id"]: n for n in flwr_cli.registered_public_keys(cfg)}
            assert len(nodes) == 2 and flwr_cli.departed_nodes(list(nodes.values()), cfg.supernode_public_keys) == []
            owner1 = flwr_cli.owner_keys([c.pki / "owner-1.supernode.pub"])
            (gone,) = [i for i, n in nodes.items()
                       if flwr_cli.owner_key_id(n["public-key"].encode()) in owner1]

            one = coord.load(c.coordinator_config(["owner-0"]))
            lines = flwr_cli.register_supernodes(one)
            assert any(f"unregistered SuperNode {gone}" in line for line in lines), lines
            status = {n["node-id"]: n["status"] for n in flwr_cli.registered_public_keys(one)}
            assert status[gone] in ("unregistered", "deleted") or gone not in status
            assert [s for i, s in status.items() if i != gone] == ["registered"]
            assert flwr_cli.register_supernodes(one) == [f"registered {c.pki / 'owner-0.supernode.pub'}"]
        finally:
            reap_group(superlink)


def test_a_supernode_refuses_a_superlink_whose_certificate_is_revoked(tmp_path):
    """owner.yaml's crl_file: `fedfhe-owner supernode` checks the SuperLink's certificate before Flower
    connects, and refuses to start when it is revoked (a stolen SuperLink key answering at its address)."""
    with Cluster(tmp_path, secure=False) as c:
        c.make_pki(["owner-0"])
        write_crl(c.pki)
        both = c.coordinator_config(["owner-0"])
        superlink = c.start_superlink(both)
        try:
            cert = refuse_if_revoked(f"{c.host}:{c.fleet_port}", c.pki / "ca.crt", c.pki / "crl.pem", "SuperLink")
            assert cert.subject.rfc4514_string().startswith("CN=superlink")
            revoke(c.pki, "superlink", "keyCompromise")
            data = tmp_path / "owner-0.csv"
            data.write_text("")
            owner = c.owner_config("owner-0", data, crl_file=str(c.pki / "crl.pem"))
            res = subprocess.run([venv_bin("fedfhe-owner"), "supernode", "--config", str(owner)],
                                 capture_output=True, text=True, timeout=120, check=False)
            assert res.returncode != 0, res.stderr
            assert "SuperLink" in res.stderr and "CN=superlink" in res.stderr and "is revoked" in res.stderr, \
                res.stderr
            assert "Traceback" not in res.stderr
        finally:
            reap_group(superlink)
