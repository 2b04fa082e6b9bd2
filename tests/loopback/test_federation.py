"""A real federation on loopback: flower-superlink + SuperNodes as separate processes, TLS,
SuperNode authentication; accuracy against centralised training; who may join; bad data."""

from __future__ import annotations

import socket
import ssl

import numpy as np
import pytest

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.manifest import verify_manifest
from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml.data import load_table
from fedfhe_common.runtime.procs import venv_bin, wait_until
from fedfhe_coordinator.train.training import run_training

pytestmark = pytest.mark.timeout(600)
OWNERS = ["owner-0", "owner-1", "owner-2"]  # as in conftest.py (its `fed` and `first_run` fixtures)


def test_federated_accuracy_matches_centralised(fed, first_run):
    from sklearn.linear_model import LogisticRegression

    artifact, rows = first_run
    verify_manifest(fed["cfg"].training.output_dir / "artifact", "fedfhe-training-artifact")
    model = TrainingArtifact.load(fed["cfg"].training.output_dir / "artifact").to_estimator()
    X_test, y_test = load_table(fed["data"] / "public-test.npz", DIGITS)
    parts = [load_table(fed["data"] / f"owner-{i}.npz", DIGITS) for i in range(3)]
    X = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    central = LogisticRegression(max_iter=2000).fit(X, y).score(X_test, y_test)
    federated = model.score(X_test, y_test)
    assert federated >= central - 0.02, (federated, central)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["fit_owners"] == OWNERS for r in rows)


def test_bad_data_is_reported_and_supernode_stays_up(fed, first_run):
    _, rows = first_run
    reasons = [f["reason"] for r in rows for f in r["failures"]]
    assert reasons, "the owner with the bad file should have failed every round"
    assert all("bad.csv" in r and "columns" in r for r in reasons), reasons
    assert fed["bad"].popen.poll() is None, "the SuperNode must stay up after a bad run"


def test_unregistered_and_untrusting_supernodes_do_not_join(fed, first_run):
    _, rows = first_run
    for r in rows:
        assert "intruder" not in r["fit_owners"] and "no-ca" not in r["fit_owners"]
        assert r["fit_nodes"] == 3
        # Only owner-bad fails: it is registered, its file is not usable.
        assert len({f["node_id"] for f in r["failures"]}) == 1
    intruder, no_ca = fed["intruder"], fed["no_ca"]
    wait_until(lambda: intruder.popen.poll() is not None, 60, "the unregistered SuperNode to be turned away")
    assert intruder.popen.returncode != 0
    assert "Failed to activate SuperNode" in intruder.log.read_text(errors="replace")
    assert "SuperNode ID" not in no_ca.log.read_text(errors="replace")


def test_superlink_refuses_plaintext(fed):
    c = fed["cluster"]
    addr = ("127.0.0.1", c.fleet_port)
    # An HTTP/2 client preface in the clear: a TLS server answers with an alert or closes.
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        reply = s.recv(64)
    assert not reply.startswith(b"\x00\x00"), "got an HTTP/2 frame over plaintext"
    # And the same port speaks TLS with the project CA.
    ctx = ssl.create_default_context(cafile=str(c.pki / "ca.crt"))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(addr, timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plaintext_supernode_cannot_join(fed, first_run):
    c = fed["cluster"]
    proc = c.start(
        "insecure-supernode",
        [venv_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{c.fleet_port}",
         "--auth-supernode-private-key", str(c.pki / "owner-0.supernode.key"), "--max-retries", "2",
         "--port", "0"],
    )
    wait_until(lambda: proc.popen.poll() is not None, 120, "the insecure SuperNode to give up")
    assert proc.popen.returncode != 0
    assert "SuperNode ID" not in proc.log.read_text(errors="replace")


def test_fixed_owner_joins_next_run(fed, first_run):
    data = fed["data"]
    X, y = load_table(data / "owner-0.npz", DIGITS)
    from fedfhe_common.ml.data import save_csv

    save_csv(data / "bad.csv", X[:100], y[:100], DIGITS)
    rows: list[dict] = []
    run_training(fed["cfg"], {"num-server-rounds": 1}, on_round=rows.append)
    assert rows[0]["fit_owners"] == sorted(OWNERS + ["owner-bad"])
    assert rows[0]["failures"] == []
