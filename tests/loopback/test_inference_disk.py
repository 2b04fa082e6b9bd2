"""A full disk under the inference node's key store: a clear RESOURCE_EXHAUSTED, nothing stored is damaged.

The node's keys_dir is a real 2 MiB tmpfs (needs root to mount). One owner
stores its keys; then

- an upload larger than the free space runs out of disk in the middle of the
  stream (the write fails with ENOSPC);
- with the disk filled to the last byte, even a 64-byte key set cannot be
  committed (the flush or the metadata write fails with ENOSPC);

both end in RESOURCE_EXHAUSTED naming the disk, leave no temp file, and the
stored key keeps working; once space is freed, uploads work again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess

import grpc
import inference_support as support
import numpy as np
import pytest

from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(240)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
MiB = 1 << 20
TMPFS_BYTES = 2 * MiB


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A node whose keys_dir is a 2 MiB tmpfs (unmounted at the end), one owner with keys stored there."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs for a real full disk")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this host")
    work = tmp_path_factory.mktemp("disk")
    keys_dir = work / "node" / "keys"  # where the harness's node keeps its keys
    keys_dir.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(keys_dir)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    node = None
    try:
        lr = support.lr_bundle(tmp_path_factory)
        pki = support.make_pki(work / "pki", ("owner-0",))
        node = support.start_node(work / "node", pki, (lr.directory,),
                                  limits={**support.LIMITS, "max_key_bytes": 64 * MiB})
        assert node.keys_dir == keys_dir
        owner = support.make_owner(node, "owner-0", work / "owner-0-state", lr.X_test)
        yield node, owner, lr
    finally:
        if node is not None:
            node.stop()
        if subprocess.run(["umount", str(keys_dir)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(keys_dir)], check=False)


def _upload(stub, header: pb.UploadHeader, data: bytes):
    def requests():
        yield pb.UploadKeysRequest(header=header)
        for start in range(0, len(data), MiB):
            yield pb.UploadKeysRequest(chunk=data[start:start + MiB])

    return stub.UploadKeys(requests(), timeout=60)


def _refused_for_disk(stub, data: bytes) -> str:
    with pytest.raises(grpc.RpcError) as info:
        _upload(stub, support.upload_header(data), data)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (info.value.code(), info.value.details())
    assert "space" in info.value.details(), info.value.details()
    return info.value.details()


def _still_works(node, owner, lr, stored: dict[str, str]) -> None:
    assert support.stored_keys(node.keys_dir) == stored  # byte for byte, and no temp file left
    X = lr.X_test[:2]
    resp = node.stub(owner.name).Predict(
        pb.PredictRequest(key_id=owner.key_id, model=MODEL, ciphertexts=owner.encrypt(X)), timeout=60)
    np.testing.assert_allclose(owner.decrypt(resp.results), lr.model.predict_proba(X, fhe="simulate"), atol=1e-9)


def test_upload_larger_than_the_free_space(setup, tmp_path_factory):
    node, owner, lr = setup
    tree, size = support.tree_bundle(tmp_path_factory)  # keys of megabytes: a linear model's are 64 bytes
    assert size > TMPFS_BYTES
    support.publish(node, tree)
    stored = support.stored_keys(node.keys_dir)
    assert [n for n in stored if n.endswith(".evk")] == [f"{owner.key_id}.evk"]
    data = np.random.default_rng(0).bytes(size)  # fails in the stream, long before validation
    with pytest.raises(grpc.RpcError) as info:
        _upload(node.stub(owner.name), support.upload_header(data, model_id=support.TREE_ID), data)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (info.value.code(), info.value.details())
    assert "space" in info.value.details(), info.value.details()
    _still_works(node, owner, lr, stored)


def test_commit_on_a_disk_full_to_the_last_byte(setup):
    node, owner, lr = setup
    stored = support.stored_keys(node.keys_dir)
    filler = node.keys_dir / "filler"  # not a key store name: the node ignores it
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    try:
        keys = owner.evaluation_keys()  # real keys, 64 bytes
        stub = node.stub(owner.name)
        _refused_for_disk(stub, keys)
        _still_works(node, owner, lr, {**stored, "filler": support.stored_keys(node.keys_dir)["filler"]})
    finally:
        filler.unlink()
    # with space again, the same upload goes through: the node did not wedge itself
    resp = _upload(stub, support.upload_header(keys), keys)
    assert resp.sha256 == hashlib.sha256(keys).hexdigest()
    stub.DeleteKeys(pb.DeleteKeysRequest(key_id=resp.key_id), timeout=30)
    _still_works(node, owner, lr, stored)


def test_disk_full_at_the_metadata_write(setup, tmp_path, monkeypatch):
    """The last write of an upload (the key's metadata, after the keys were renamed into place) fails:
    both files go, the quota slot is freed, and the next upload is stored (the store in-process here)."""
    from fedfhe_inference import keystore
    from fedfhe_inference.errors import ServiceError

    _, owner, _ = setup
    keys = owner.evaluation_keys()
    store = keystore.KeyStore(tmp_path / "keys", max_keys_per_owner=1, max_key_bytes=MiB, max_chunk_bytes=MiB,
                              cache_bytes=MiB)

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def upload():
        with store.upload(owner.name, support.MODEL_ID, support.VERSION, len(keys),
                          hashlib.sha256(keys).hexdigest()) as up:
            up.write(keys)
            return up.commit()

    monkeypatch.setattr(keystore, "write_atomic", no_space)
    with pytest.raises(ServiceError) as info:
        upload()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk space" in info.value.message
    assert list((tmp_path / "keys").iterdir()) == [] and store.owned_by(owner.name) == []
    monkeypatch.undo()
    record = upload()  # quota of 1: the failed upload did not keep its slot
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [f"{record.key_id}.evk", f"{record.key_id}.json"]
