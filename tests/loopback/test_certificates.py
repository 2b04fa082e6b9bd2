"""Certificates on every link: expired, not yet valid, from another CA, for another host name, or an owner's
certificate where a server's belongs: all refused.

Links and who checks what:

- data owner -> inference node (mutual TLS): the node refuses bad client
  certificates; the owner's client refuses a bad server certificate;
- SuperNode -> SuperLink Fleet API and `flwr` CLI -> SuperLink Control API
  (TLS, the SuperLink's certificate checked against the project CA): a
  SuperNode given the project CA does not join a SuperLink presenting a bad
  certificate, and `flwr` refuses to talk to it.

Each case is paired with the good certificate doing the same thing
successfully, so a refusal is the certificate's doing, not the setup's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from reliability_helpers import reap_group, supernode_id

from fedfhe_common.pki.ca import init_ca, issue
from fedfhe_common.pki.release import make_release_key
from fedfhe_common.runtime.procs import flower_env, free_port, venv_bin, wait_until
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.train import flwr_cli
from fedfhe_owner import config as owner_config
from fedfhe_owner.config import InferenceEndpoint
from fedfhe_owner.predict.inference_client import InferenceClient, InferenceError
from fedfhe_owner.supernode.launch import supernode_command
from fedfhe_testbed.cluster import Cluster
from fedfhe_testbed.inference_node import InferenceNode, write_config
from fedfhe_testbed.partition_cli import write_partitions

pytestmark = pytest.mark.timeout(400)
HOSTS = ["127.0.0.1", "localhost"]
NOW = dt.datetime.now(dt.UTC)
EXPIRED = {"not_before": NOW - dt.timedelta(days=30), "days": 1}
NOT_YET_VALID = {"not_before": NOW + dt.timedelta(days=2), "days": 30}
# Each bad server certificate, and the reason gRPC's TLS (BoringSSL) gives when the client refuses it.
BAD_SERVER_CERTS = {
    "expired": "certificate has expired",
    "not-yet-valid": "certificate is not yet valid",
    "another-ca": "unable to get local issuer certificate",
    "wrong-host-name": "Hostname Verification Check failed",
    "owner-certificate": "unsupported certificate purpose",  # clientAuth only, no SAN
    # a clientAuth-only certificate whose CN is the name the client dials (no SAN): only the serverAuth
    # usage check stands between it and the client
    "owner-certificate-named-after-the-host": "unsupported certificate purpose",
}


def bad_server_certificates(pki: Path, foreign: Path, prefix: str, owner: str) -> dict[str, tuple[Path, Path]]:
    """Server certificates a client must refuse (cert, key), issued into ``pki``."""
    out = {
        "expired": issue(pki, f"{prefix}-expired", server_hosts=HOSTS, **EXPIRED),
        "not-yet-valid": issue(pki, f"{prefix}-future", server_hosts=HOSTS, **NOT_YET_VALID),
        "another-ca": issue(pki, f"{prefix}-foreign", server_hosts=HOSTS, ca_dir=foreign),
        "wrong-host-name": issue(pki, f"{prefix}-elsewhere", server_hosts=["elsewhere.example", "10.9.8.7"]),
        "owner-certificate": (pki / f"{owner}.crt", pki / f"{owner}.key"),
        "owner-certificate-named-after-the-host": issue(pki, "localhost", client=True),
    }
    assert set(out) == set(BAD_SERVER_CERTS)
    return out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("foreign-ca")
    init_ca(d, common_name="someone else's CA")
    issue(d, "alice", client=True)
    return d


# ---- inference link -----------------------------------------------------------------------------------
def inference_node(work: Path, pki: Path, cert: Path, key: Path) -> InferenceNode:
    """`fedfhe-inference serve` without bundles (starts in about a second) with a given server certificate.

    Ready once its log says it listens and its port is open: a client refuses most of these certificates,
    so the harness's health probe could never answer.
    """
    make_release_key(pki)  # kept when it exists: the node needs one to verify bundles
    config = write_config(work / "inference.yaml", pki, f"127.0.0.1:{free_port()}", work,
                          certfile=str(cert), keyfile=str(key), rescan_interval_s=0)
    node = InferenceNode(config, pki, "alice")
    node.launch()
    try:
        node.wait_listening(60)
    except BaseException:
        node.stop()
        raise
    return node


def _list_models(pki: Path, port: int, owner: str = "alice", owner_pki: Path | None = None,
                 server_name: str = "") -> InferenceError | None:
    d = owner_pki or pki
    endpoint = InferenceEndpoint(address=f"127.0.0.1:{port}", certfile=d / f"{owner}.crt", keyfile=d / f"{owner}.key",
                                 ca_certfile=pki / "ca.crt", server_name=server_name)
    with InferenceClient(endpoint) as client:
        client.info_timeout = 20
        try:
            client.list_models()
        except InferenceError as exc:
            return exc
    return None


@pytest.fixture(scope="module")
def inference_pki(tmp_path_factory, foreign):
    pki = tmp_path_factory.mktemp("inference-pki")
    init_ca(pki)
    issue(pki, "inference", server_hosts=HOSTS)
    issue(pki, "alice", client=True)
    issue(pki, "alice-expired", client=True, **EXPIRED)
    issue(pki, "alice-future", client=True, **NOT_YET_VALID)
    issue(pki, "server-only", server_hosts=HOSTS)
    return pki


@pytest.fixture(scope="module")
def good_node(tmp_path_factory, inference_pki):
    node = inference_node(tmp_path_factory.mktemp("good-node"), inference_pki, inference_pki / "inference.crt",
                          inference_pki / "inference.key")
    yield node
    node.stop()


@pytest.mark.parametrize("who", ["expired", "not-yet-valid", "another-ca", "server-certificate"])
def test_inference_node_refuses_bad_client_certificates(inference_pki, foreign, good_node, who):
    owner, owner_pki = {"expired": ("alice-expired", None), "not-yet-valid": ("alice-future", None),
                        "another-ca": ("alice", foreign), "server-certificate": ("server-only", None)}[who]
    err = _list_models(inference_pki, good_node.port, owner, owner_pki)
    assert err is not None, f"the node accepted a client certificate that is {who}"
    assert err.code.name in ("UNAVAILABLE", "PERMISSION_DENIED"), err
    assert _list_models(inference_pki, good_node.port) is None  # the good owner, same node: accepted


@pytest.mark.parametrize("case", BAD_SERVER_CERTS)
def test_owner_refuses_a_bad_inference_server_certificate(tmp_path, inference_pki, foreign, good_node, case):
    cert, key = bad_server_certificates(inference_pki, foreign, "inference", "alice")[case]
    server_name = "localhost" if case == "owner-certificate-named-after-the-host" else ""
    assert _list_models(inference_pki, good_node.port, server_name=server_name) is None  # the control
    node = inference_node(tmp_path / "node", inference_pki, cert, key)
    try:
        err = _list_models(inference_pki, node.port, server_name=server_name)
        assert err is not None, f"the owner's client accepted a server certificate: {case}"
        assert err.code.name == "UNAVAILABLE", err  # the handshake failed: no RPC ran
        assert BAD_SERVER_CERTS[case] in err.details, err.details
    finally:
        node.stop()


# ---- Flower links -------------------------------------------------------------------------------------
OWNER = "owner-0"


@pytest.fixture(scope="module")
def federation(tmp_path_factory, foreign):
    """A SuperLink with the good certificate: the SuperNode is registered, joins, and `flwr` talks to it.

    Registrations live in the SuperLink's database, so each restart with a bad certificate keeps them:
    a SuperNode that does not join then is refused by TLS, not for lack of registration.
    """
    work = tmp_path_factory.mktemp("flower-certs")
    write_partitions("digits", 1, work / "data", scheme="iid", seed=0)
    with Cluster(work, secure=False) as c:
        c.make_pki([OWNER])
        cfg_path = c.coordinator_config([OWNER])
        owner_cfg = owner_config.load(c.owner_config(OWNER, work / "data" / "owner-0.npz"))
        bad = bad_server_certificates(c.pki, foreign, "superlink", OWNER)
        superlink = c.start_superlink(cfg_path)
        c.register(cfg_path)
        fed = {"cluster": c, "cfg_path": cfg_path, "owner_cfg": owner_cfg, "bad": bad}
        for by_name in (False, True):  # dialing 127.0.0.1 and dialing localhost both work with the good one
            cfg, owner = _dialing(fed, c.pki / "superlink.crt", c.pki / "superlink.key", f"good-{by_name}", by_name)
            assert _flwr_ls(cfg)["success"] is True
            if by_name:
                # A second SuperNode with the same key straight after the first is refused (exit 305)
                # until the SuperLink drops the first session; flwr's check above covers the name.
                continue
            node = _supernode(c, owner, f"good-{by_name}")
            wait_until(lambda n=node: supernode_id(n.log) is not None, 120,
                       "the SuperNode to join with the good certificate")
            c.stop(node)
            reap_group(node)
        c.stop(superlink)
        yield fed
        for proc in list(c.procs):
            reap_group(proc)


def _flwr_ls(cfg_path: Path) -> dict:
    """`flwr ls` against the SuperLink of ``cfg_path``, verifying its certificate with the project CA."""
    res = subprocess.run([venv_bin("flwr"), "ls", flwr_cli.CONNECTION, "--format", "json"],
                         env=flwr_cli.flwr_env(coord.load(cfg_path)), capture_output=True, text=True, timeout=120,
                         check=False)
    try:
        return json.loads(res.stdout)
    except ValueError:
        return {"success": False, "returncode": res.returncode, "output": res.stdout + res.stderr}


def _supernode(c: Cluster, owner_cfg, tag: str):
    """flower-supernode as fedfhe-owner starts it, with the project CA, giving up after 2 retries."""
    argv = [*supernode_command(owner_cfg), "--max-retries", "2", "--max-wait-time", "30"]
    return c.start(f"supernode-{tag}", argv, env=flower_env())


def _dialing(fed, cert: Path, key: Path, tag: str, by_name: bool):
    """The coordinator config with this SuperLink certificate, and the owner config; ``by_name``: the
    SuperNode and `flwr` dial "localhost" instead of 127.0.0.1 (the SuperLink listens on 127.0.0.1 either way)."""
    c = fed["cluster"]
    data = yaml.safe_load(fed["cfg_path"].read_text())
    data["superlink"].update(certfile=str(cert), keyfile=str(key))
    owner = fed["owner_cfg"]
    if by_name:
        data["superlink"]["control_address"] = f"localhost:{c.control_port}"
        owner = dataclasses.replace(owner, superlink=f"localhost:{c.fleet_port}")
    path = c.work / f"coordinator-{tag}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, owner


@pytest.mark.parametrize("case", BAD_SERVER_CERTS)
def test_supernode_and_flwr_refuse_a_bad_superlink_certificate(federation, case):
    c = federation["cluster"]
    cert, key = federation["bad"][case]
    cfg_path, owner = _dialing(federation, cert, key, case, by_name=case == "owner-certificate-named-after-the-host")
    superlink = c.start_superlink(cfg_path)
    node = None
    try:
        res = _flwr_ls(cfg_path)
        assert res["success"] is False, f"flwr talked to a SuperLink with a bad certificate ({case}): {res}"
        node = _supernode(c, owner, case)
        wait_until(lambda: node.popen.poll() is not None, 120, "the SuperNode to give up")
        log = node.log.read_text(errors="replace")
        assert supernode_id(node.log) is None, f"the SuperNode joined a SuperLink with a bad certificate ({case})"
        # Flower's exit code 305: could not connect to the SuperLink (the process status keeps 305 & 0xFF)
        assert node.popen.returncode != 0 and "Exit Code: 305" in log, log[-2000:]
        assert BAD_SERVER_CERTS[case] in log, log[-2000:]
    finally:
        c.stop_many([p for p in (node, superlink) if p is not None])
        if node is not None:
            reap_group(node)
