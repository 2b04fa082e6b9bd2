"""The inference-node harness for tests: Node (fedfhe_demo.inference_node's InferenceNode), its config and owners.

The node runs as a subprocess on a free loopback port with mutual TLS; tests
talk to it through the owner's client library or raw gRPC stubs. The fixtures
that use this module live in tests/conftest.py (bundles, PKI) and
tests/loopback/conftest.py (the running node and its owners).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.procs import free_port
from fedfhe_common.release import load_verify_key
from fedfhe_demo.inference_node import InferenceNode, write_config
from fedfhe_owner.config import InferenceEndpoint

OWNERS = ("alice", "bob", "carol", "dave")
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



@dataclass
class Owner:
    """An owner with keys uploaded for digits-lr 1 and 2 (through the real client path)."""

    name: str
    state_dir: Path
    endpoint: InferenceEndpoint
    key_ids: dict[str, str]

    def fhe(self, version: str) -> Any:
        from fedfhe_owner.keys import ModelKeys

        client, _ = ModelKeys(self.state_dir, "digits-lr", version).fhe_client()
        return client

    def encrypt(self, version: str, X: np.ndarray) -> list[bytes]:
        fhe = self.fhe(version)
        return [fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]


def make_owner(node: Node, name: str, state_dir: Path, X: np.ndarray) -> Owner:
    from fedfhe_owner.predict import predict_rows

    endpoint = node.endpoint(name)
    ids = {}
    for v in ("1", "2"):
        res = predict_rows(endpoint, state_dir, X[:2], model_id="digits-lr", version=v, progress=False)
        ids[v] = res.key_id
    return Owner(name, state_dir, endpoint, ids)


