"""The shared evaluation-key registry on loopback: a real PostgreSQL over TLS, two inference nodes.

PostgreSQL (tests/support/postgres_server.py) runs from a temp dir as the ``postgres`` system user, with a
server certificate from the test PKI and ``hostssl ... cert clientcert=verify-full``: the nodes log in as the
CN of their client certificate (``fedfhe-registry``). An owner uploads its keys through node A and predicts
through node B, which has never seen them: B fetches them from the registry, checks them against the circuit
and serves (decrypted results equal Concrete ML's simulation). DeleteKeys through A ends them on B too. A
client certificate from another CA gets no connection to the database.
"""

from __future__ import annotations

import urllib.request

import grpc
import inference_support as support
import numpy as np
import pytest
import yaml
from postgres_server import DB_NAME, DB_USER, PostgresServer, connect, issue_certificates, unavailable_reason
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.pki.ca import init_ca, issue
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(600)
OWNER = "owner-0"
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("registry")
    pki = support.make_pki(work / "pki", (OWNER,))
    issue_certificates(pki)
    pg = PostgresServer(pki)
    nodes = []
    try:
        pg.start()
        registry = pg.registry_config(pki)
        lr = support.lr_bundle(tmp_path_factory)
        for name in ("a", "b"):
            nodes.append(support.start_node(work / name, pki, (lr.directory,), key_registry=registry))
        yield pg, pki, nodes[0], nodes[1], lr, work
    finally:
        for node in nodes:
            node.stop()
        pg.stop()


def _metrics(node) -> dict[str, float]:
    address = yaml.safe_load(node.config.read_text())["metrics_address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("fedfhe_inference_key_registry_")}


def _predict(node, owner, X):
    resp = node.stub(owner.name).Predict(
        pb.PredictRequest(key_id=owner.key_id, model=MODEL, ciphertexts=owner.encrypt(X)), timeout=120)
    return owner.decrypt(resp.results)


def test_upload_through_a_predict_through_b_delete_through_a(setup):
    pg, pki, a, b, lr, work = setup
    owner = support.make_owner(a, OWNER, work / "owner-state", lr.X_test)  # uploads through A (and predicts)
    assert (a.keys_dir / f"{owner.key_id}.evk").is_file()
    assert not (b.keys_dir / f"{owner.key_id}.evk").exists()
    with pg.superuser() as conn:
        row = conn.execute("SELECT owner, size, sha256 FROM fedfhe_keys WHERE key_id = %s",
                           (owner.key_id,)).fetchone()
    evk = (a.keys_dir / f"{owner.key_id}.evk").read_bytes()
    assert row is not None and row[0] == OWNER and row[1] == len(evk)

    before = _metrics(b)
    X = lr.X_test[:3]
    expected = lr.model.predict_proba(X, fhe="simulate")
    np.testing.assert_allclose(_predict(b, owner, X), expected, atol=1e-9)  # B: miss, load, serve
    after = _metrics(b)
    grew = {name: after[f"fedfhe_inference_key_registry_{name}_total"]
            - before[f"fedfhe_inference_key_registry_{name}_total"] for name in ("misses", "loads", "hits")}
    assert grew == {"misses": 1, "loads": 1, "hits": 0}, grew
    assert (b.keys_dir / f"{owner.key_id}.evk").read_bytes() == evk  # B's checked local copy
    np.testing.assert_allclose(_predict(b, owner, X), expected, atol=1e-9)  # now from B's copy
    hits = "fedfhe_inference_key_registry_hits_total"
    assert _metrics(b)[hits] == after[hits] + 1

    # Another owner cannot use the key id through B either.
    with pytest.raises(grpc.RpcError) as info:
        b.stub("alice").Predict(pb.PredictRequest(key_id=owner.key_id, model=MODEL, ciphertexts=owner.encrypt(X[:1])),
                                timeout=60)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()

    a.stub(OWNER).DeleteKeys(pb.DeleteKeysRequest(key_id=owner.key_id), timeout=60)
    with pytest.raises(grpc.RpcError) as info:
        _predict(b, owner, X[:1])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert not (b.keys_dir / f"{owner.key_id}.evk").exists()  # B dropped its copy
    assert not (a.keys_dir / f"{owner.key_id}.evk").exists()


def test_a_client_certificate_from_another_ca_cannot_connect(setup, tmp_path):
    import psycopg

    pg, pki, *_ = setup
    other = tmp_path / "other-ca"
    init_ca(other)
    crt, key = issue(other, DB_USER, client=True)  # the right CN, the wrong CA
    with pytest.raises(psycopg.OperationalError):
        connect(host="127.0.0.1", port=pg.port, dbname=DB_NAME, user=DB_USER, sslmode="verify-full",
                sslrootcert=str(pki / "ca.crt"), sslcert=str(crt), sslkey=str(key))
    # the same connection with the project CA's certificate works
    with connect(host="127.0.0.1", port=pg.port, dbname=DB_NAME, user=DB_USER, sslmode="verify-full",
                 sslrootcert=str(pki / "ca.crt"), sslcert=str(pki / f"{DB_USER}.crt"),
                 sslkey=str(pki / f"{DB_USER}.key")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == DB_USER
