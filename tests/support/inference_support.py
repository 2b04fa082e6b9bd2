"""The inference-node harness for tests, and what the inference tests share; no tests here.

- The node: ``Node`` (fedfhe_testbed.inference_node's InferenceNode, the `fedfhe-inference serve`
  process) on a free loopback port with mutual TLS, its config (``write_node_config``, the tests'
  small ``LIMITS``) and ``start_node``; ``publish`` adds a bundle to a running node.
- Its owners: ``Owner`` and ``make_owner`` (keys generated and uploaded through the real client path),
  and ``write_owner_yaml`` (an owner.yaml that predicts through the node).
- The suite-wide fixtures in tests/conftest.py (``pki`` with ``SESSION_OWNERS``, ``digits``,
  ``lr_bundles``) and tests/loopback/conftest.py (the session ``node``, ``alice``, ``bob``) use it.
- The reliability tests (test_inference_*.py, test_load.py) that start nodes of their own use
  ``make_pki`` (owner-0..7, trusting the session release key) and the digits LogisticRegression
  bundle ``lr_bundle``, compiled once per pytest process (training + compile cost ~15 s), however
  many test modules ask for it. The module-scoped fixtures ``lr`` and ``module_pki`` are imported
  by the modules that use them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfhe_common.contracts.bundle import CLIENT_ZIP
from fedfhe_common.pki.ca import init_ca, issue
from fedfhe_common.pki.release import load_verify_key
from fedfhe_common.runtime.procs import free_port
from fedfhe_owner.config import InferenceEndpoint
from fedfhe_testbed.inference_node import InferenceNode, write_config

MODEL_ID, VERSION = "digits-lr", "1"
# The owners with a certificate in the suite-wide ``pki`` fixture (tests/conftest.py).
SESSION_OWNERS = ("alice", "bob", "carol", "dave")
# The owners make_pki issues certificates to by default.
OWNERS = tuple(f"owner-{i}" for i in range(8))
# refusal_burst: the bad-input, fuzz and traversal tests send thousands of bad calls and check each one's own
# status; the refused-call budget that would turn them away at the door has its own test (test_inference_guard).
LIMITS = {"max_batch_rows": 32, "max_keys_per_owner": 4, "max_key_bytes": 100 << 20, "max_chunk_bytes": 2 << 20,
          "refusal_burst": 1_000_000}


@dataclass
class Digits:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    train_csv: Path
    test_csv: Path


# --- the node ---------------------------------------------------------------------------------------------------

class Node(InferenceNode):
    """The tests' name for the one inference-node harness (fedfhe_testbed.inference_node): a node in ``work``.

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


def start_node(work: Path, pki: Path, bundles: Iterable[Path] = (), **overrides: Any) -> Node:
    """A running node in ``work`` on a free loopback port, serving the signed ``bundles`` (directories).

    ``overrides`` go to write_node_config; stop what it returns.
    """
    from fedfhe_inference.bundles import publish_bundle

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    n = Node(work, pki, port, write_node_config(work, pki, port, **overrides))
    n.bundles_dir.mkdir(parents=True, exist_ok=True)
    for directory in bundles:
        publish_bundle(directory, n.bundles_dir, load_verify_key(pki / "release.pub"))
    n.start()
    return n


def publish(node: Node, directory: Path) -> None:
    """Publish a signed bundle into a running node and wait until it is served."""
    from fedfhe_common.runtime.procs import wait_until
    from fedfhe_inference.bundles import publish_bundle
    from fedfhe_proto.inference.v1 import inference_pb2 as pb

    meta = publish_bundle(directory, node.bundles_dir, load_verify_key(node.pki / "release.pub"))[0]
    node.signal(signal.SIGHUP)
    stub = node.stub("alice")
    wait_until(lambda: bool(stub.ListModels(pb.ListModelsRequest(model_id=meta.parent.name), timeout=10).models),
               120, f"{meta.parent.name} to be served")


# --- its owners -------------------------------------------------------------------------------------------------

@dataclass
class Owner:
    """A data owner with keys generated and uploaded (through the real client path) for versions of MODEL_ID.

    ``key_ids`` maps each version to the node's key id; the methods take the version, VERSION unless given.
    """

    name: str
    state_dir: Path
    endpoint: InferenceEndpoint
    key_ids: dict[str, str]
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key_id(self) -> str:
        """The key id for VERSION."""
        return self.key_ids[VERSION]

    def fhe(self, version: str = VERSION) -> Any:
        """The FHEModelClient holding this owner's keys for ``version`` (read from ``state_dir`` once)."""
        if version not in self._clients:
            from fedfhe_owner.predict.keys import ModelKeys

            self._clients[version], _ = ModelKeys(self.state_dir, MODEL_ID, version).fhe_client()
        return self._clients[version]

    def encrypt(self, X: np.ndarray, version: str = VERSION) -> list[bytes]:
        """One ciphertext a row of ``X``."""
        fhe = self.fhe(version)
        return [fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]

    def decrypt(self, results: Any, version: str = VERSION) -> np.ndarray:
        fhe = self.fhe(version)
        return np.vstack([np.asarray(fhe.deserialize_decrypt_dequantize(r)).reshape(1, -1) for r in results])

    def evaluation_keys(self, version: str = VERSION) -> bytes:
        return self.fhe(version).get_serialized_evaluation_keys()


def make_owner(node: Node, name: str, state_dir: Path, X: np.ndarray, versions: tuple[str, ...] = (VERSION,),
               rows: int = 1) -> Owner:
    """``name``'s keys for each of ``versions`` of MODEL_ID, uploaded by predicting ``X[:rows]`` with each."""
    from fedfhe_owner.predict.encrypted import predict_rows

    endpoint = node.endpoint(name)
    ids = {}
    for v in versions:
        res = predict_rows(endpoint, state_dir, X[:rows], model_id=MODEL_ID, version=v, progress=False)
        ids[v] = res.key_id
    owner = Owner(name, state_dir, endpoint, ids)
    for v in versions:
        owner.fhe(v)  # the keys as they are now, before a test can touch state_dir
    return owner


def write_owner_yaml(path: Path, owner: str, endpoint: InferenceEndpoint, state_dir: Path, data: Path,
                     inference: dict[str, Any] | None = None, **top: Any) -> Path:
    """An owner.yaml at ``path`` that predicts only through ``endpoint``, and ``path``.

    No SuperNode runs from it: superlink and auth_key are never used. ``inference`` adds to its
    ``inference`` section (model_id, batch_size), ``top`` sets top-level keys (crl_file, auth_key).
    """
    ep = endpoint
    path.write_text(json.dumps({
        "owner_id": owner, "superlink": "127.0.0.1:1", "root_certificates": str(ep.ca_certfile),
        "auth_key": "unused", "data": str(data), "state_dir": str(state_dir),
        "release_public_key": str(ep.release_public_key), **top,
        "inference": {"address": ep.address, "certfile": str(ep.certfile), "keyfile": str(ep.keyfile),
                      "ca_certfile": str(ep.ca_certfile), **(inference or {})},
    }))
    return path


# --- the PKI and bundles of the reliability tests ----------------------------------------------------------------

_cache: dict[str, Any] = {}


@dataclass
class LrBundle:
    """The digits LR bundle (n_bits 8), its compiled model (for simulate) and held-out rows."""

    directory: Path
    model: Any
    X_test: np.ndarray
    y_test: np.ndarray


def release_dir() -> Path:
    """One release key pair for the session: bundles are signed with it, every make_pki PKI trusts it."""
    if "release" not in _cache:
        import tempfile

        from fedfhe_common.pki.release import make_release_key

        directory = Path(tempfile.mkdtemp(prefix="fedfhe-test-release-"))
        make_release_key(directory)
        _cache["release"] = directory
    return _cache["release"]


def signing_key() -> Any:
    from fedfhe_common.pki.release import load_signing_key

    return load_signing_key(release_dir() / "release.key")


def lr_bundle(tmp_path_factory: pytest.TempPathFactory) -> LrBundle:
    if "lr" not in _cache:
        from fedfhe_coordinator.fhe.compile import compile_artifact
        from fedfhe_coordinator.fhe.local_training import train_local
        from fedfhe_testbed.datasets import load_builtin

        work = tmp_path_factory.mktemp("lr-bundle")
        X, y, schema = load_builtin("digits")
        idx = np.random.default_rng(0).permutation(len(y))
        train, test = idx[:1400], idx[1400:]
        train_local(X[train], y[train], schema, "LogisticRegression").save(work / "artifact", signing_key())
        result, model = compile_artifact(work / "artifact", work / "bundle", n_bits=8, model_id=MODEL_ID,
                                         version=VERSION, signing_key=signing_key())
        _cache["lr"] = LrBundle(result.directory, model, X[test], y[test])
    return _cache["lr"]


TREE_ID = "digits-tree"


def tree_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A small decision-tree bundle whose evaluation keys are megabytes (a linear model's are 64 bytes).

    The node sizes an upload from the circuit, so the tests that need a long upload
    (a kill or a full disk mid-stream) use this model; returns (bundle dir, key bytes).
    """
    if "tree" not in _cache:
        from concrete.ml.sklearn import DecisionTreeClassifier

        from fedfhe_common.contracts.fhe_wire import CircuitSpec
        from fedfhe_coordinator.fhe.compile import compile_concrete_bundle
        from fedfhe_testbed.datasets import load_builtin

        X, y, schema = load_builtin("digits")
        model = DecisionTreeClassifier(max_depth=2, n_bits=3, random_state=0).fit(X, y)
        out = tmp_path_factory.mktemp("tree-bundle") / "bundle"
        bundle = compile_concrete_bundle(model, out, model_id=TREE_ID, version=VERSION, schema=schema,
                                         calibration=X[:100], signing_key=signing_key())
        size = CircuitSpec.from_client_zip((bundle.directory / CLIENT_ZIP).read_bytes()).max_key_bytes
        _cache["tree"] = (bundle.directory, size)
    return _cache["tree"]


def make_pki(directory: Path, owners: tuple[str, ...] = OWNERS) -> Path:
    """The project CA, the node's certificate (127.0.0.1, localhost) and one client certificate per owner.

    "alice" is always there: the harness's health probe presents her certificate. The release key
    is the session's (release_dir), so the node accepts lr_bundle and tree_bundle.
    """
    init_ca(directory, exist_ok=True)
    issue(directory, "inference", server_hosts=["127.0.0.1", "localhost"])
    for owner in ("alice", *owners):
        issue(directory, owner, client=True)
    for name in ("release.key", "release.pub"):
        shutil.copyfile(release_dir() / name, directory / name)
    return directory


@pytest.fixture(scope="module", name="lr")
def lr_fixture(tmp_path_factory: pytest.TempPathFactory) -> LrBundle:
    """The ``lr`` fixture: the digits LR bundle (compiled once per process)."""
    return lr_bundle(tmp_path_factory)


@pytest.fixture(scope="module", name="module_pki")
def module_pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``module_pki`` fixture: a fresh make_pki per test module (not the suite-wide ``pki``)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- wire helpers -----------------------------------------------------------------------------------------------

def upload_header(data: bytes, total: int | None = None, model_id: str = MODEL_ID) -> Any:
    from fedfhe_proto.inference.v1 import inference_pb2 as pb

    return pb.UploadHeader(model=pb.ModelRef(model_id=model_id, version=VERSION),
                           total_bytes=len(data) if total is None else total,
                           sha256=hashlib.sha256(data).hexdigest())


def stored_keys(keys_dir: Path) -> dict[str, str]:
    """Every file in the key store with its SHA-256 (what a test compares before and after a fault)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(keys_dir.iterdir()) if p.is_file()}
