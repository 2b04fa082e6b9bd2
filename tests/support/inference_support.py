"""Shared by the inference reliability tests (test_inference_*.py, test_load.py, test_certificates.py); no tests here.

Reuses the `fedfhe-inference serve` harness of inference_harness.py
(Node, write_node_config, start_node: fedfhe_demo.inference_node's InferenceNode),
and compiles the digits LogisticRegression bundle once per pytest process
(training + compile cost ~15 s), however many test modules ask for it. The
module-scoped fixtures ``lr`` and ``pki`` are imported by the modules that use them.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import inference_harness
import numpy as np
import pytest
from inference_harness import LIMITS, Node, write_node_config  # noqa: F401  (re-exported for the tests)

from fedfhe_common.bundle import CLIENT_ZIP
from fedfhe_common.pki import init_ca, issue

MODEL_ID, VERSION = "digits-lr", "1"
OWNERS = tuple(f"owner-{i}" for i in range(8))


_cache: dict[str, Any] = {}


@dataclass
class LrBundle:
    """The digits LR bundle (n_bits 8), its compiled model (for simulate) and held-out rows."""

    directory: Path
    model: Any
    X_test: np.ndarray
    y_test: np.ndarray


def release_dir() -> Path:
    """One release key pair for the session: bundles are signed with it, every test PKI trusts it."""
    if "release" not in _cache:
        import tempfile

        from fedfhe_common.release import make_release_key

        directory = Path(tempfile.mkdtemp(prefix="fedfhe-test-release-"))
        make_release_key(directory)
        _cache["release"] = directory
    return _cache["release"]


def signing_key() -> Any:
    from fedfhe_common.release import load_signing_key

    return load_signing_key(release_dir() / "release.key")


def lr_bundle(tmp_path_factory: pytest.TempPathFactory) -> LrBundle:
    if "lr" not in _cache:
        from fedfhe_coordinator.compile import compile_artifact
        from fedfhe_coordinator.local_training import train_local
        from fedfhe_demo.datasets import load_builtin

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

        from fedfhe_common.fhe_wire import CircuitSpec
        from fedfhe_coordinator.compile import compile_concrete_bundle
        from fedfhe_demo.datasets import load_builtin

        X, y, schema = load_builtin("digits")
        model = DecisionTreeClassifier(max_depth=2, n_bits=3, random_state=0).fit(X, y)
        out = tmp_path_factory.mktemp("tree-bundle") / "bundle"
        bundle = compile_concrete_bundle(model, out, model_id=TREE_ID, version=VERSION, schema=schema,
                                         calibration=X[:100], signing_key=signing_key())
        size = CircuitSpec.from_client_zip((bundle.directory / CLIENT_ZIP).read_bytes()).max_key_bytes
        _cache["tree"] = (bundle.directory, size)
    return _cache["tree"]


def publish(node: Any, directory: Path) -> None:
    """Publish a signed bundle into a running node and wait until it is served."""
    from fedfhe_common.procs import wait_until
    from fedfhe_common.release import load_verify_key
    from fedfhe_inference.bundles import publish_bundle
    from fedfhe_proto.inference.v1 import inference_pb2 as pb

    meta = publish_bundle(directory, node.bundles_dir, load_verify_key(node.pki / "release.pub"))[0]
    node.signal(signal.SIGHUP)
    stub = node.stub("alice")
    wait_until(lambda: bool(stub.ListModels(pb.ListModelsRequest(model_id=meta.parent.name), timeout=10).models),
               120, f"{meta.parent.name} to be served")


def make_pki(directory: Path, owners: tuple[str, ...] = OWNERS) -> Path:
    """The project CA, the node's certificate (127.0.0.1, localhost) and one client certificate per owner.

    "alice" is always there: the harness's health probe presents her certificate.
    """
    init_ca(directory, exist_ok=True)
    issue(directory, "inference", server_hosts=["127.0.0.1", "localhost"])
    for owner in ("alice", *owners):
        issue(directory, owner, client=True)
    for name in ("release.key", "release.pub"):
        shutil.copyfile(release_dir() / name, directory / name)
    return directory


def start_node(work: Path, pki: Path, bundle: LrBundle | None, **overrides: Any) -> Any:
    """A running `fedfhe-inference serve` on a free loopback port, serving ``bundle`` if given."""
    return inference_harness.start_node(work, pki, () if bundle is None else (bundle.directory,), **overrides)


@pytest.fixture(scope="module", name="lr")
def lr_fixture(tmp_path_factory: pytest.TempPathFactory) -> LrBundle:
    """The ``lr`` fixture: the digits LR bundle (compiled once per process)."""
    return lr_bundle(tmp_path_factory)


@pytest.fixture(scope="module", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``pki`` fixture: a fresh make_pki per test module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Owner:
    """A data owner with its keys generated and uploaded (through the real client path)."""

    name: str
    state_dir: Path
    endpoint: Any
    key_id: str
    fhe: Any  # FHEModelClient holding this owner's keys

    def encrypt(self, X: np.ndarray) -> list[bytes]:
        return [self.fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]

    def decrypt(self, results: Any) -> np.ndarray:
        return np.vstack([np.asarray(self.fhe.deserialize_decrypt_dequantize(r)).reshape(1, -1) for r in results])

    def evaluation_keys(self) -> bytes:
        return self.fhe.get_serialized_evaluation_keys()


def make_owner(node: Any, name: str, state_dir: Path, X: np.ndarray) -> Owner:
    from fedfhe_owner.keys import ModelKeys
    from fedfhe_owner.predict import predict_rows

    endpoint = node.endpoint(name)
    res = predict_rows(endpoint, state_dir, X[:1], model_id=MODEL_ID, version=VERSION, progress=False)
    fhe, _ = ModelKeys(state_dir, MODEL_ID, VERSION).fhe_client()
    return Owner(name, state_dir, endpoint, res.key_id, fhe)


def upload_header(data: bytes, total: int | None = None, model_id: str = MODEL_ID) -> Any:
    from fedfhe_proto.inference.v1 import inference_pb2 as pb

    return pb.UploadHeader(model=pb.ModelRef(model_id=model_id, version=VERSION),
                           total_bytes=len(data) if total is None else total,
                           sha256=hashlib.sha256(data).hexdigest())


def stored_keys(keys_dir: Path) -> dict[str, str]:
    """Every file in the key store with its SHA-256 (what a test compares before and after a fault)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(keys_dir.iterdir()) if p.is_file()}
