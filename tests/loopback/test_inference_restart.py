"""The inference node is SIGKILLed and restarted: what it accepted is still served, half-written keys never are.

One node (a real `fedfhe-inference serve` process) serves the digits LR bundle;
two owners upload their evaluation keys through the client library. Then:

- killed at rest: after the restart every key and every bundle is served again,
  and owners predict with the key ids they already hold (no re-upload);
- killed in the middle of a client-streaming upload: the restarted node has
  swept the temp file, lists no new key, and the owner can upload again
  (its quota slot was not leaked).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading

import grpc
import inference_support as support
import numpy as np
import pytest
from inference_support import lr_fixture  # noqa: F401 - the lr fixture

from fedfhe_common.contracts.bundle import FILES as BUNDLE_FILES
from fedfhe_common.contracts.bundle import KIND as BUNDLE_KIND
from fedfhe_common.contracts.manifest import MANIFEST, write_manifest
from fedfhe_common.pki.release import load_verify_key, sign_manifest
from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.bundles import publish_bundle
from fedfhe_owner.predict.encrypted import predict_rows
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(300)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
MiB = 1 << 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory, lr):
    work = tmp_path_factory.mktemp("restart")
    pki = support.make_pki(work / "pki", ("owner-0", "owner-1"))
    node = support.start_node(work / "node", pki, (lr.directory,))
    # a second published bundle (the same circuit under another model id), picked up without a restart
    copy = work / "digits-lr-b"
    shutil.copytree(lr.directory, copy)
    meta = json.loads((copy / MANIFEST).read_text())
    for key in ("kind", "format_version", "files"):
        meta.pop(key)
    write_manifest(copy, BUNDLE_KIND, list(BUNDLE_FILES), {**meta, "model_id": "digits-lr-b"})
    sign_manifest(copy, support.signing_key())
    publish_bundle(copy, node.bundles_dir, load_verify_key(pki / "release.pub"))
    node.signal(signal.SIGHUP)
    wait_until(lambda: len(_served(node)) == 2, 60, "the second bundle to be served")
    owners = [support.make_owner(node, o, work / f"{o}-state", lr.X_test) for o in ("owner-0", "owner-1")]
    yield node, owners
    node.stop()


def _predict(node, owner, X) -> np.ndarray:
    stub = node.stub(owner.name)
    resp = stub.Predict(pb.PredictRequest(key_id=owner.key_id, model=MODEL, ciphertexts=owner.encrypt(X)),
                        timeout=60)
    return owner.decrypt(resp.results)


def _served(node) -> list[tuple[str, str, str]]:
    models = node.stub("owner-0").ListModels(pb.ListModelsRequest(), timeout=30).models
    return [(m.model_id, m.version, m.bundle_sha256) for m in models]


def test_keys_and_bundles_survive_sigkill(setup, lr):
    node, owners = setup
    X = lr.X_test[:3]
    expected = lr.model.predict_proba(X, fhe="simulate")
    before = {"files": support.stored_keys(node.keys_dir), "served": _served(node)}
    assert len([n for n in before["files"] if n.endswith(".evk")]) == 2 and len(before["served"]) == 2

    node.kill()
    node.start()

    assert support.stored_keys(node.keys_dir) == before["files"]
    assert _served(node) == before["served"]
    for owner in owners:  # the key ids the owners already hold work, no re-upload
        np.testing.assert_allclose(_predict(node, owner, X), expected, atol=1e-9)
        res = predict_rows(owner.endpoint, owner.state_dir, X, model_id=support.MODEL_ID, progress=False)
        assert not res.keys_uploaded and res.key_id == owner.key_id
        np.testing.assert_array_equal(res.predictions, lr.model.predict(X, fhe="simulate"))
    assert support.stored_keys(node.keys_dir) == before["files"]


def test_upload_interrupted_by_sigkill_leaves_no_key(setup, lr, tmp_path_factory):
    """A tree's key set declared (megabytes), 3 MiB sent, then the stream stalls until the node is killed mid-write."""
    node, owners = setup
    tree, total = support.tree_bundle(tmp_path_factory)
    support.publish(node, tree)
    before = support.stored_keys(node.keys_dir)
    sent = 3 * MiB
    assert total > 2 * sent
    data = np.random.default_rng(1).bytes(total)
    stall = threading.Event()
    outcome: dict[str, object] = {}

    def requests():
        yield pb.UploadKeysRequest(header=support.upload_header(data, model_id=support.TREE_ID))
        for start in range(0, sent, MiB):
            yield pb.UploadKeysRequest(chunk=data[start:start + MiB])
        stall.wait(120)

    def upload() -> None:
        try:
            outcome["response"] = node.stub("owner-1").UploadKeys(requests(), timeout=120)
        except grpc.RpcError as exc:
            outcome["code"] = exc.code()

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()

    def partial() -> list:
        return [p for p in node.keys_dir.glob(".upload-*.part") if p.stat().st_size >= sent - MiB]

    wait_until(lambda: bool(partial()), 60, "the node to write part of the upload")
    node.kill()
    stall.set()
    thread.join(60)
    assert "response" not in outcome and outcome.get("code") == grpc.StatusCode.UNAVAILABLE, outcome
    leftovers = [p.name for p in node.keys_dir.glob(".upload-*.part")]
    assert leftovers, "the kill should leave the half-written temp file behind (what start-up must sweep)"

    node.start()
    assert support.stored_keys(node.keys_dir) == before  # swept: no part file, no new key
    for owner in owners:
        np.testing.assert_allclose(_predict(node, owner, lr.X_test[:2]),
                                   lr.model.predict_proba(lr.X_test[:2], fhe="simulate"), atol=1e-9)
    # the interrupted upload held no quota slot after the restart: a real upload goes through
    keys = owners[1].evaluation_keys()
    stub = node.stub("owner-1")
    resp = stub.UploadKeys(iter([pb.UploadKeysRequest(header=support.upload_header(keys)),
                                 pb.UploadKeysRequest(chunk=keys)]), timeout=60)
    assert resp.sha256 == hashlib.sha256(keys).hexdigest()
    stub.DeleteKeys(pb.DeleteKeysRequest(key_id=resp.key_id), timeout=30)


def test_leftovers_of_a_crash_are_swept_or_ignored_on_start(setup, lr):
    """What a crash at any step of an upload or a delete can leave: none of it is served, the rest is."""
    node, owners = setup
    before = support.stored_keys(node.keys_dir)
    node.stop()
    orphan_key = "a" * 32  # keys renamed into place, metadata not yet written
    (node.keys_dir / f"{orphan_key}.evk").write_bytes(b"half")
    (node.keys_dir / ".upload-crash.part").write_bytes(b"x" * 1000)
    dangling = "b" * 32  # metadata whose key file a delete already removed
    (node.keys_dir / f"{dangling}.json").write_text(json.dumps(
        {"key_id": dangling, "owner": "owner-0", "model_id": "digits-lr", "version": "1", "size": 4,
         "sha256": "0" * 64, "created_at": 0}))
    node.start()
    files = support.stored_keys(node.keys_dir)
    assert f"{orphan_key}.evk" not in files and ".upload-crash.part" not in files
    stub = node.stub("owner-0")
    for key_id in (orphan_key, dangling):
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(pb.PredictRequest(key_id=key_id, model=MODEL, ciphertexts=owners[0].encrypt(lr.X_test[:1])),
                         timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    (node.keys_dir / f"{dangling}.json").unlink()
    assert support.stored_keys(node.keys_dir) == before
    np.testing.assert_allclose(_predict(node, owners[0], lr.X_test[:1]),
                               lr.model.predict_proba(lr.X_test[:1], fhe="simulate"), atol=1e-9)
