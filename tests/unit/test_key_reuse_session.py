"""The owner's predict session with keys another version already uploaded: attach first, upload only if refused.

A stand-in node records what the session asks; the owner's key-id files are real (``ModelKeys``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from fedfhe_owner.predict.encrypted import _Session
from fedfhe_owner.predict.inference_client import InferenceError
from fedfhe_owner.predict.keys import ModelKeys

ADDRESS, EVK = "127.0.0.1:1", b"the same evaluation keys"
SHA = hashlib.sha256(EVK).hexdigest()
SHARED = "a" * 32


class Node:
    """Answers AttachKeys, UploadKeys and Predict as told, and records the calls."""

    def __init__(self, attach: grpc.StatusCode | None = None, predict: list[InferenceError] | None = None) -> None:
        self.endpoint = SimpleNamespace(address=ADDRESS)
        self.attach_code, self.predict_errors, self.calls = attach, list(predict or []), []

    def _fail(self, method: str, code: grpc.StatusCode, details: str) -> InferenceError:
        return InferenceError(ADDRESS, method, code, details)

    def attach_keys(self, key_id: str, info: Any, fingerprint: str) -> Any:
        self.calls.append(("attach", key_id, info.version, fingerprint))
        if self.attach_code is not None:
            raise self._fail("AttachKeys", self.attach_code, "refused")
        return SimpleNamespace(key_id=key_id, versions=["1", info.version])

    def upload_keys(self, info: Any, data: bytes, on_chunk: Any = None, sha256: str = "") -> Any:
        self.calls.append(("upload", len(data)))
        return SimpleNamespace(key_id="b" * 32)

    def predict(self, key_id: str, info: Any, ciphertexts: list[bytes]) -> Any:
        self.calls.append(("predict", key_id))
        if self.predict_errors:
            raise self.predict_errors.pop(0)
        return SimpleNamespace(results=[b"r"] * len(ciphertexts), server_seconds=0.0)


class Bar:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any) -> None:
        pass


def _session(tmp_path: Path, node: Node) -> tuple[_Session, ModelKeys]:
    sibling = ModelKeys(tmp_path, "m", "1")
    sibling.remember_key_id(ADDRESS, SHARED, SHA)  # version 1 uploaded these very evaluation keys
    keys = ModelKeys(tmp_path, "m", "2")
    siblings = SimpleNamespace(keys=[sibling], fingerprint="f" * 64)
    fhe = SimpleNamespace(get_serialized_evaluation_keys=lambda: EVK)
    info = SimpleNamespace(model_id="m", version="2")
    return _Session(node, info, keys, fhe, Bar(), siblings), keys  # type: ignore[arg-type]


def test_keys_on_the_node_for_another_version_are_attached_not_uploaded(tmp_path):
    node = Node()
    session, keys = _session(tmp_path, node)
    session.call([b"ct"])
    session.call([b"ct"])
    assert node.calls == [("attach", SHARED, "2", "f" * 64), ("predict", SHARED), ("predict", SHARED)]
    assert (session.uploaded, session.uploaded_bytes, session.attached_from) == (False, 0, "1")
    assert keys.key_id(ADDRESS, SHA) == SHARED  # the next predict of version 2 goes straight to Predict


@pytest.mark.parametrize("code", [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.INVALID_ARGUMENT])
def test_a_refused_attach_uploads_as_before(tmp_path, code):
    node = Node(attach=code)  # a node of before key sharing, keys it lost, or keys it judges unfit
    session, keys = _session(tmp_path, node)
    session.call([b"ct"])
    assert [c[0] for c in node.calls] == ["attach", "upload", "predict"]
    assert (session.uploaded, session.attached_from, keys.key_id(ADDRESS, SHA)) == (True, "", "b" * 32)


def test_an_unavailable_node_is_an_error_not_an_upload(tmp_path):
    session, _ = _session(tmp_path, Node(attach=grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(InferenceError, match="UNAVAILABLE"):
        session.call([b"ct"])


def test_keys_detached_from_this_version_elsewhere_are_uploaded_again_once(tmp_path):
    detached = InferenceError(ADDRESS, "Predict", grpc.StatusCode.FAILED_PRECONDITION,
                              f"key {SHARED} serves m version(s) 1, not m version 2: attach them to it (AttachKeys) "
                              "if its circuit takes the same key set, or generate and upload keys for that version")
    quarantined = InferenceError(ADDRESS, "Predict", grpc.StatusCode.FAILED_PRECONDITION,
                                 f"evaluation keys {SHARED} are quarantined (crash); delete them and upload new keys")
    node = Node(predict=[detached])
    session, _ = _session(tmp_path, node)
    session.call([b"ct"])
    assert [c[0] for c in node.calls] == ["attach", "predict", "upload", "predict"]
    node = Node(predict=[quarantined])
    session, _ = _session(tmp_path / "other", node)
    with pytest.raises(InferenceError, match="quarantined"):
        session.call([b"ct"])
