"""The shared evaluation-key registry on loopback: a real PostgreSQL over TLS, two inference nodes.

PostgreSQL runs from a temp dir as the ``postgres`` system user, with a server certificate from the
test PKI and ``hostssl ... cert clientcert=verify-full``: the nodes log in as the CN of their client
certificate (``fedfhe-registry``). An owner uploads its keys through node A and predicts through node B,
which has never seen them: B fetches them from the registry, checks them against the circuit and serves
(decrypted results equal Concrete ML's simulation). DeleteKeys through A ends them on B too. A client
certificate from another CA gets no connection to the database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import grpc
import inference_support as support
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.pki import init_ca, issue
from fedfhe_common.procs import free_port, wait_until
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_USER, DB_NAME = "fedfhe-registry", "fedfhe"
OWNER = "owner-0"
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run PostgreSQL as the postgres system user"
    if not (PG_BIN / "postgres").is_file() or not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL 15 binaries missing in {PG_BIN} (scripts/sysdeps.sh installs postgresql)"
    if shutil.which("runuser") is None:
        return "no runuser command"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres system user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'fedfhe-inference[registry]')"
    return None


def _connect(**kw):
    import psycopg

    return psycopg.connect(connect_timeout=5, **kw)


class Postgres:
    """A PostgreSQL server in a private temp dir (owned by postgres), TLS with certificates from ``pki``."""

    def __init__(self, pki: Path) -> None:
        import pwd

        pw = pwd.getpwnam("postgres")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = Path(tempfile.mkdtemp(prefix="fedfhe-pg-"))  # not under pytest's 0700 root-only tmp dirs
        os.chown(self.home, self.uid, self.gid)
        self.data = self.home / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(self.data),
                        "-U", "postgres", "-A", "reject", "--no-sync"],
                       check=True, capture_output=True, cwd=self.home)
        for src, name in ((pki / "pg-server.crt", "server.crt"), (pki / "pg-server.key", "server.key"),
                          (pki / "ca.crt", "root.crt")):
            shutil.copyfile(src, self.data / name)
            os.chown(self.data / name, self.uid, self.gid)
            os.chmod(self.data / name, 0o600)
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"  # setup only: the socket lives in the 0700 data dir
            "hostssl all all 127.0.0.1/32 cert clientcert=verify-full\n")

    def start(self) -> None:
        log = open(self.home / "postgres.log", "wb")  # noqa: SIM115 - the server's whole life
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data), "-k", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.data / 'server.crt'}", "-c", f"ssl_key_file={self.data / 'server.key'}",
             "-c", f"ssl_ca_file={self.data / 'root.crt'}", "-c", "fsync=off"],
            user=self.uid, group=self.gid, extra_groups=[], cwd=self.data, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def up() -> bool:
            assert self.proc.poll() is None, (self.home / "postgres.log").read_text()[-2000:]
            try:
                with _connect(host=str(self.data), port=self.port, user="postgres", dbname="postgres"):
                    return True
            except Exception:  # noqa: BLE001 - not accepting connections yet
                return False

        wait_until(up, 60, "PostgreSQL to accept connections")
        with _connect(host=str(self.data), port=self.port, user="postgres", dbname="postgres",
                      autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{DB_USER}" LOGIN')
            conn.execute(f'CREATE DATABASE {DB_NAME} OWNER "{DB_USER}"')

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("registry")
    pki = support.make_pki(work / "pki", (OWNER,))
    issue(pki, "pg-server", server_hosts=["127.0.0.1", "localhost"])
    issue(pki, DB_USER, client=True)
    pg = Postgres(pki)
    nodes = []
    try:
        pg.start()
        registry = {"host": "127.0.0.1", "port": pg.port, "dbname": DB_NAME, "user": DB_USER,
                    "ca_certfile": str(pki / "ca.crt"), "certfile": str(pki / f"{DB_USER}.crt"),
                    "keyfile": str(pki / f"{DB_USER}.key")}
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
    with _connect(host=str(pg.data), port=pg.port, user="postgres", dbname=DB_NAME) as conn:
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
        _connect(host="127.0.0.1", port=pg.port, dbname=DB_NAME, user=DB_USER, sslmode="verify-full",
                 sslrootcert=str(pki / "ca.crt"), sslcert=str(crt), sslkey=str(key))
    # the same connection with the project CA's certificate works
    with _connect(host="127.0.0.1", port=pg.port, dbname=DB_NAME, user=DB_USER, sslmode="verify-full",
                  sslrootcert=str(pki / "ca.crt"), sslcert=str(pki / f"{DB_USER}.crt"),
                  sslkey=str(pki / f"{DB_USER}.key")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == DB_USER
