"""Revocation on the inference node: a revoked owner is refused on every method at once, no restart needed.

A real node with ``crl_file`` serves owners from its own PKI; ``fedfhe-pki
revoke`` rewrites crl.pem and the next call of the revoked owner is refused
(the node re-reads the CRL when the file changes) while the others are still
served. A CRL that does not verify against the CA stops start-up and, at
runtime, leaves the last good one in force.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import inference_support as support
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedfhe_common.pki.ca import init_ca, issue, revoke, write_crl
from fedfhe_common.pki.pki_cli import main as pki_main
from fedfhe_common.pki.release import make_release_key
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.procs import free_port, venv_bin, wait_until
from fedfhe_inference.identity import Identity, Revocations
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(300)
OWNERS = ("alice", "bob", "carol")


def _pki(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    init_ca(d)
    issue(d, "inference", server_hosts=["127.0.0.1", "localhost"])
    for owner in OWNERS:
        issue(d, owner, client=True)
    make_release_key(d)
    write_crl(d)
    return d


@pytest.fixture(scope="module")
def rpki(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Path:
    """A CA of its own (revocations here touch no other module), the session's release key (its bundles)."""
    d = _pki(tmp_path_factory.mktemp("revocation-pki"))
    for name in ("release.key", "release.pub"):
        (d / name).write_bytes((pki / name).read_bytes())
    return d


@pytest.fixture(scope="module")
def crl_node(rpki: Path, tmp_path_factory: pytest.TempPathFactory, lr_bundles: dict) -> Iterator[object]:
    n = support.start_node(tmp_path_factory.mktemp("revocation-node"), rpki, (lr_bundles["1"].directory,),
                           crl_file=str(rpki / "crl.pem"))
    yield n
    n.stop()


def _served(node: object, owner: str) -> None:
    with node.channel(owner) as ch:  # type: ignore[attr-defined]
        pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=20)
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=20)


def _refused_everywhere(node: object, owner: str) -> None:
    with node.channel(owner) as ch:  # type: ignore[attr-defined]
        for name, call in node.calls(ch).items():  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert "revoked" in (info.value.details() or ""), (name, info.value.details())


def _key_files(node: object, key_id: str) -> list[str]:
    return sorted(p.name for p in node.keys_dir.glob(f"{key_id}.*"))  # type: ignore[attr-defined]


def test_a_revoked_owner_is_refused_at_once_and_the_others_still_served(crl_node, rpki, tmp_path, digits):
    pid = crl_node.proc.pid
    for owner in OWNERS:
        _served(crl_node, owner)
    keys = {o: support.make_owner(crl_node, o, tmp_path / f"{o}-state", digits.X_test).key_id for o in ("alice", "bob")}
    # A channel opened before the revocation is refused too: the check runs on every call, not per handshake.
    with crl_node.channel("bob") as early:
        pb_grpc.InferenceStub(early).ListModels(pb.ListModelsRequest(), timeout=20)
        assert pki_main(["--dir", str(rpki), "revoke", "bob", "--reason", "keyCompromise"]) == 0
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.InferenceStub(early).ListModels(pb.ListModelsRequest(), timeout=20)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _refused_everywhere(crl_node, "bob")
    _served(crl_node, "alice")
    _served(crl_node, "carol")
    assert "is revoked" in crl_node.log_text()

    # A CRL signed by another CA is logged and ignored: bob stays refused, alice and carol are served.
    foreign = _pki(tmp_path / "foreign")
    revoke(foreign, "alice")
    (rpki / "crl.pem").write_bytes((foreign / "crl.pem").read_bytes())
    _refused_everywhere(crl_node, "bob")
    _served(crl_node, "alice")
    wait_until(lambda: "keeping the last good CRL" in crl_node.log_text(), 30, "the bad CRL to be logged",
               interval=0.1)

    # A good CRL again (re-signed by 'fedfhe-pki crl'), then SIGHUP: still one process, same verdicts.
    assert pki_main(["--dir", str(rpki), "crl"]) == 0
    crl_node.signal(signal.SIGHUP)
    _refused_everywhere(crl_node, "bob")
    _served(crl_node, "carol")
    # The reload deleted the keys bob's revoked certificate uploaded; alice's stay.
    wait_until(lambda: not _key_files(crl_node, keys["bob"]), 30, "bob's keys to be evicted", interval=0.1)
    assert _key_files(crl_node, keys["alice"]) == [f"{keys['alice']}.evk", f"{keys['alice']}.json"]
    assert f"evicted keys {keys['bob']}" in crl_node.log_text() and "is revoked" in crl_node.log_text()
    # Re-issuing bob's certificate (--force revokes the old one) lets the new certificate in.
    assert pki_main(["--dir", str(rpki), "client", "bob", "--force"]) == 0
    _served(crl_node, "bob")
    assert crl_node.proc.pid == pid and crl_node.alive()


def test_a_crl_that_does_not_verify_stops_start_up(tmp_path):
    ours, theirs = _pki(tmp_path / "ours"), _pki(tmp_path / "theirs")
    Identity.from_file(ours / "ca.crt", ours / "crl.pem")
    with pytest.raises(ConfigError, match="does not verify"):
        Identity.from_file(ours / "ca.crt", theirs / "crl.pem")
    with pytest.raises(ConfigError, match="crl_file"):
        Identity.from_file(ours / "ca.crt", ours / "missing.pem")


def test_reload_keeps_the_last_good_crl(tmp_path, caplog):
    ours, theirs = _pki(tmp_path / "ours"), _pki(tmp_path / "theirs")
    cas = [x509.load_pem_x509_certificate((ours / "ca.crt").read_bytes())]
    revoke(ours, "bob")
    r = Revocations(ours / "crl.pem", cas)
    bob = x509.load_pem_x509_certificate((ours / "bob.crt").read_bytes()).serial_number
    assert r.current() == {bob}
    (ours / "crl.pem").write_bytes((theirs / "crl.pem").read_bytes())
    assert r.current() == {bob}
    (ours / "crl.pem").unlink()
    r.reload()
    assert r.current() == {bob}
    assert "keeping the last good CRL" in caplog.text
    revoke(ours, "carol")
    assert len(r.current()) == 2


def test_an_owner_refuses_an_inference_node_whose_certificate_is_revoked(crl_node, rpki, tmp_path):
    """Last in the module: it revokes the node's own certificate in ``rpki``."""
    from fedfhe_owner.predict.inference_client import InferenceClient, InferenceError
    from fedfhe_owner.server_certificate import RevokedServerError

    endpoint = crl_node.endpoint("alice", crl_file=rpki / "crl.pem")
    with InferenceClient(endpoint) as client:  # not revoked: the check passes, calls are served
        client.list_models()
    assert pki_main(["--dir", str(rpki), "revoke", "inference", "--reason", "keyCompromise"]) == 0
    with pytest.raises(RevokedServerError, match=r"inference node 127\.0\.0\.1:\d+: its certificate "
                                                 r"\(CN=inference, serial [0-9a-f]+\) is revoked"):
        InferenceClient(endpoint)
    # The owner's command line says so in one line and fails, through owner.yaml's top-level crl_file.
    owner_yaml = support.write_owner_yaml(tmp_path / "alice.yaml", "alice", endpoint, tmp_path / "st",
                                          tmp_path / "none.csv", auth_key=str(rpki / "alice.key"),
                                          crl_file=str(rpki / "crl.pem"))
    res = subprocess.run([venv_bin("fedfhe-owner"), "delete-keys", "--config", str(owner_yaml)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0 and "is revoked on the project CRL" in res.stderr, res.stderr
    # Without a reachable node the owner gets UNAVAILABLE, not a silent pass.
    gone = dataclasses.replace(endpoint, address=f"127.0.0.1:{free_port()}")
    with pytest.raises(InferenceError, match="UNAVAILABLE"):
        InferenceClient(gone)
