"""Fixtures for the inference tests: a PKI, compiled bundles and a real `fedfhe-inference serve` process.

The node runs as a subprocess on a free loopback port with mutual TLS (the one
harness, fedfhe_demo.inference_node, here named Node); tests talk to it through
the owner's client library or raw gRPC stubs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfhe_client.config import InferenceEndpoint
from fedfhe_common.data import save_csv
from fedfhe_common.pki import init_ca, issue
from fedfhe_common.procs import free_port
from fedfhe_common.release import load_signing_key, load_verify_key, make_release_key
from fedfhe_common.schema import DIGITS
from fedfhe_demo.datasets import load_builtin
from fedfhe_demo.inference_node import InferenceNode, write_config

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


class Node(InferenceNode):
    """The tests' name for the one inference-node harness (fedfhe_demo.inference_node): a node in ``work``.

    Its health probe presents alice's certificate; its log is ``work``/inference.log.
    """

    def __init__(self, work: Path, pki: Path, port: int, config: Path) -> None:
        super().__init__(config, pki, "alice", log=work / "inference.log")
        self.work = work
        assert self.port == port, (self.port, port)

    @staticmethod
    def calls(ch: Any) -> dict[str, Callable[[], object]]:
        """One call of each service on ``ch`` (Inference, health, reflection): what an identity check must cover."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        from fedfhe_proto.inference.v1 import inference_pb2 as pb
        from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

        stub = pb_grpc.InferenceStub(ch)
        return {
            "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=20),
            "DeleteKeys": lambda: stub.DeleteKeys(pb.DeleteKeysRequest(key_id="0" * 32), timeout=20),
            "health": lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=20),
            "reflection": lambda: list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=20)),
        }


def write_node_config(work: Path, pki: Path, port: int, **overrides: Any) -> Path:
    """``work``/inference.yaml on 127.0.0.1:``port``: rescans only on SIGHUP, the tests' small LIMITS."""
    return write_config(work / "inference.yaml", pki, f"127.0.0.1:{port}", work,
                        **{"pid_file": str(work / "inference.pid"), "rescan_interval_s": 0, "limits": dict(LIMITS),
                           **overrides})


def start_node(work: Path, pki: Path, bundles: tuple[Path, ...] = (), **overrides: Any) -> Node:
    """A running node in ``work`` on a free loopback port, serving the signed ``bundles`` (directories)."""
    from fedfhe_inference.bundles import publish_bundle

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    n = Node(work, pki, port, write_node_config(work, pki, port, **overrides))
    n.bundles_dir.mkdir(parents=True, exist_ok=True)
    for directory in bundles:
        publish_bundle(directory, n.bundles_dir, load_verify_key(pki / "release.pub"))
    n.start()
    return n


@pytest.fixture(scope="session")
def node_starter() -> Callable[..., Node]:
    """start_node for test modules (a conftest is not importable by name); stop what it returns."""
    return start_node


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Path, lr_bundles: dict[str, Any]) -> Any:
    """One node for the session, serving digits-lr versions 1 and 2."""
    n = start_node(tmp_path_factory.mktemp("node"), pki, (lr_bundles["1"].directory, lr_bundles["2"].directory))
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
