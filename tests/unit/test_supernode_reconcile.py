"""Reconciling the SuperLink with supernode_public_keys: a key no longer listed (revoked owner) is unregistered."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from fedfhe_common.pki.ca import supernode_keypair
from fedfhe_coordinator.train.flwr_cli import departed_nodes


def _pem(pub) -> str:
    key = serialization.load_ssh_public_key(pub.read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_the_plan_unregisters_only_keys_no_longer_listed(tmp_path):
    pubs = {o: supernode_keypair(tmp_path, o)[1] for o in ("owner-0", "owner-1", "owner-2")}
    nodes = [
        {"node-id": 11, "status": "online", "public-key": _pem(pubs["owner-0"])},
        {"node-id": 12, "status": "registered", "public-key": _pem(pubs["owner-1"])},
        {"node-id": 13, "status": "offline", "public-key": _pem(pubs["owner-2"])},
        {"node-id": 14, "status": "unregistered", "public-key": _pem(pubs["owner-2"])},
    ]
    assert departed_nodes(nodes, list(pubs.values())) == []
    # owner-1 revoked: its .supernode.pub is taken out of coordinator.yaml, so its node goes, whatever its status.
    assert departed_nodes(nodes, [pubs["owner-0"], pubs["owner-2"]]) == [12]
    assert departed_nodes(nodes, [pubs["owner-0"]]) == [12, 13]
    assert departed_nodes(nodes, []) == [11, 12, 13]
