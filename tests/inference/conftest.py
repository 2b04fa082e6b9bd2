"""Fixtures for the inference tests: a PKI, compiled bundles and a real `fedfhe-inference serve` process.

The node runs as a subprocess on a free loopback port with mutual TLS; tests
talk to it through the owner's client library or raw gRPC stubs.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedfhe_client.config import InferenceEndpoint
from fedfhe_common.data import save_csv
from fedfhe_common.pki import init_ca, issue
from fedfhe_common.procs import free_port, venv_bin, wait_until
from fedfhe_common.release import load_signing_key, load_verify_key, make_release_key
from fedfhe_common.schema import DIGITS
from fedfhe_demo.datasets import load_builtin
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

OWNERS = ("alice", "bob", "carol", "dave")
LIMITS = {"max_batch_rows": 32, "max_keys_per_owner": 4, "max_key_bytes": 100 << 20, "max_chunk_bytes": 2 << 20}


@dataclass
class Digits:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    train_csv: Path
    test_csv: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    work = tmp_path_factory.mktemp("digits")
    X, y, schema = load_builtin("digits")
    idx = np.random.default_rng(0).permutation(len(y))
    train, test = idx[:1400], idx[1400:]
    save_csv(work / "train.csv", X[train], y[train], schema)
    save_csv(work / "test.csv", X[test], y[test], schema)
    return Digits(X[train], y[train], X[test], y[test], work / "train.csv", work / "test.csv")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project CA with the node's and owners' certificates, plus an expired one."""
    d = tmp_path_factory.mktemp("pki")
    init_ca(d)
    issue(d, "inference", server_hosts=["127.0.0.1", "localhost"])
    for owner in OWNERS:
        issue(d, owner, client=True)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue(d, "expired", client=True, not_before=past, days=1)
    make_release_key(d)
    return d



@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA: its certificates must not open the node."""
    d = tmp_path_factory.mktemp("foreign-pki")
    init_ca(d, common_name="someone else's CA")
    issue(d, "alice", client=True)  # even the same CN
    return d


@pytest.fixture(scope="session")
def lr_artifact(tmp_path_factory: pytest.TempPathFactory, digits: Digits, pki: Path) -> Path:
    """A signed LogisticRegression artifact from the local-training path (origin=local)."""
    from fedfhe_server.local_training import train_local_file

    out = tmp_path_factory.mktemp("artifacts") / "lr"
    train_local_file(digits.train_csv, DIGITS, "LogisticRegression", out,
                     signing_key=load_signing_key(pki / "release.key"))
    return out


@pytest.fixture(scope="session")
def lr_bundles(tmp_path_factory: pytest.TempPathFactory, lr_artifact: Path, digits: Digits,
               pki: Path) -> dict[str, Any]:
    """digits-lr version 1 (n_bits chosen to stay within 0.5 points of clear) and 2 (2 more bits).

    Different n_bits make different circuits and ciphertexts.
    """
    from fedfhe_common.artifact import TrainingArtifact
    from fedfhe_server.compile import compile_artifact
    from fedfhe_server.nbits import choose_n_bits

    artifact = TrainingArtifact.load(lr_artifact)
    choice = choose_n_bits(artifact.to_estimator(), artifact.family, artifact.schema, digits.X_test, digits.y_test,
                           candidates=range(6, 13))
    assert choice.chosen is not None, choice.to_dict()
    out = tmp_path_factory.mktemp("bundles")
    key = load_signing_key(pki / "release.key")
    v1, m1 = compile_artifact(lr_artifact, out / "v1", n_bits=choice.chosen, model_id="digits-lr", version="1",
                              eval_set=(digits.X_test, digits.y_test), signing_key=key)
    v2, m2 = compile_artifact(lr_artifact, out / "v2", n_bits=choice.chosen + 2, model_id="digits-lr", version="2",
                              signing_key=key)
    return {"1": v1, "2": v2, "model_1": m1, "model_2": m2}


@dataclass
class Node:
    """A `fedfhe-inference serve` subprocess and how to reach it."""

    work: Path
    pki: Path
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.log = self.work / "inference.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def bundles_dir(self) -> Path:
        return self.work / "bundles"

    @property
    def keys_dir(self) -> Path:
        return self.work / "keys"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def start(self, timeout: float = 120) -> None:
        fh = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [venv_bin("fedfhe-inference"), "serve", "--config", str(self.config)],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        fh.close()
        self.starts += 1
        wait_until(self.serving, timeout, f"fedfhe-inference to serve (log {self.log})", interval=0.2)

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"fedfhe-inference exited ({code}); log:\n{self.log_text()[-3000:]}")
        return True

    def serving(self) -> bool:
        self.alive()
        with self.channel("alice") as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def endpoint(self, owner: str, **extra: Any) -> InferenceEndpoint:
        return InferenceEndpoint(
            address=self.address, certfile=self.pki / f"{owner}.crt", keyfile=self.pki / f"{owner}.key",
            ca_certfile=self.pki / "ca.crt", release_public_key=self.pki / "release.pub", **extra,
        )

    def channel(self, owner: str | None, pki: Path | None = None, max_bytes: int = 256 << 20) -> grpc.Channel:
        """A TLS channel presenting ``owner``'s certificate (from ``pki``), or none at all."""
        d = pki or self.pki
        ca = (self.pki / "ca.crt").read_bytes()
        if owner is None:
            creds = grpc.ssl_channel_credentials(root_certificates=ca)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=(d / f"{owner}.key").read_bytes(),
                certificate_chain=(d / f"{owner}.crt").read_bytes(),
            )
        opts = [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]
        return grpc.secure_channel(self.address, creds, options=opts)

    def stub(self, owner: str | None, pki: Path | None = None) -> pb_grpc.InferenceStub:
        return pb_grpc.InferenceStub(self.channel(owner, pki))


def write_node_config(work: Path, pki: Path, port: int, **overrides: Any) -> Path:
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "certfile": str(pki / "inference.crt"),
        "keyfile": str(pki / "inference.key"),
        "ca_certfile": str(pki / "ca.crt"),
        "bundles_dir": str(work / "bundles"),
        "keys_dir": str(work / "keys"),
        "release_public_key": str(pki / "release.pub"),
        "pid_file": str(work / "inference.pid"),
        "rescan_interval_s": 0,
        "limits": dict(LIMITS),
        **overrides,
    }
    path = work / "inference.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Path, lr_bundles: dict[str, Any]) -> Any:
    """One node for the session, serving digits-lr versions 1 and 2."""
    from fedfhe_inference.bundles import publish_bundle

    work = tmp_path_factory.mktemp("node")
    port = free_port()
    n = Node(work, pki, port, write_node_config(work, pki, port))
    for v in ("1", "2"):
        publish_bundle(lr_bundles[v].directory, n.bundles_dir, load_verify_key(pki / "release.pub"))
    n.start()
    yield n
    n.stop()


@dataclass
class Owner:
    """An owner with keys uploaded for digits-lr 1 and 2 (through the real client path)."""

    name: str
    state_dir: Path
    endpoint: InferenceEndpoint
    key_ids: dict[str, str]

    def fhe(self, version: str) -> Any:
        from fedfhe_client.keys import ModelKeys

        client, _ = ModelKeys(self.state_dir, "digits-lr", version).fhe_client()
        return client

    def encrypt(self, version: str, X: np.ndarray) -> list[bytes]:
        fhe = self.fhe(version)
        return [fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]


def make_owner(node: Node, name: str, state_dir: Path, X: np.ndarray) -> Owner:
    from fedfhe_client.predict import predict_rows

    endpoint = node.endpoint(name)
    ids = {}
    for v in ("1", "2"):
        res = predict_rows(endpoint, state_dir, X[:2], model_id="digits-lr", version=v, progress=False)
        ids[v] = res.key_id
    return Owner(name, state_dir, endpoint, ids)


@pytest.fixture(scope="session")
def alice(node: Node, digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    return make_owner(node, "alice", tmp_path_factory.mktemp("alice-state"), digits.X_test)


@pytest.fixture(scope="session")
def bob(node: Node, digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    return make_owner(node, "bob", tmp_path_factory.mktemp("bob-state"), digits.X_test)
