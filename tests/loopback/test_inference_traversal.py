"""Path traversal on the inference node: no name a client or a bundle supplies reaches outside its directory.

Names that reach the node's filesystem: key ids (keys_dir/<key_id>.evk), model
ids and versions (bundles_dir/<model_id>/<version>), the file names a bundle's
manifest lists, and the members of client.zip/server.zip (Concrete unpacks them).
Key ids must be the 32 hex digits the node handed out; model ids and versions
plain names; manifest entries and zip members plain file names. Sentinel files
sit where a traversal would land; they must be untouched.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

import grpc
import inference_support as support
import pytest

from fedfhe_common.contracts.bundle import FILES as BUNDLE_FILES
from fedfhe_common.contracts.bundle import KIND as BUNDLE_KIND
from fedfhe_common.contracts.manifest import MANIFEST, canonical_body, sha256_file, write_manifest
from fedfhe_common.pki.release import load_verify_key, sign_manifest
from fedfhe_common.runtime.errors import IntegrityError
from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.bundles import publish_bundle
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(240)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
HOSTILE = [
    "../victim", "../../victim", "../../../../../../etc/passwd", "/etc/passwd", "..", ".", "a/../../victim",
    "..\\..\\victim", "victim\x00.evk", "%2e%2e%2fvictim", "....//victim", "~root", "\uff0e\uff0e/victim",
    "digits-lr/../../victim", "x" * 4096, " ../victim", "victim\n", "digits-lr\n",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lr = support.lr_bundle(tmp_path_factory)
    work = tmp_path_factory.mktemp("traversal")
    pki = support.make_pki(work / "pki", ("owner-0",))
    node = support.start_node(work / "node", pki, (lr.directory,))
    owner = support.make_owner(node, "owner-0", work / "owner-0-state", lr.X_test)
    # where "../victim" would land from keys_dir and from bundles_dir
    sentinels = [node.work / "victim.evk", node.work / "victim.json", node.work / "victim" / "1" / MANIFEST]
    for path in sentinels:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sentinel")
    yield node, owner, lr, sentinels
    node.stop()


def _refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    assert info.value.code() == code, (request, info.value.code(), info.value.details())
    assert info.value.details()
    return info.value.details()


def _intact(node, sentinels, stored) -> None:
    assert all(p.read_text() == "sentinel" for p in sentinels)
    assert support.stored_keys(node.keys_dir) == stored


def test_key_ids(setup):
    node, owner, lr, sentinels = setup
    stub = node.stub(owner.name)
    stored = support.stored_keys(node.keys_dir)
    ct = owner.encrypt(lr.X_test[:1])
    for key_id in [*HOSTILE, "", owner.key_id.upper(), owner.key_id + "/", owner.key_id[:-1] + "/",
                   owner.key_id + "\n"]:
        assert "malformed" in _refused(stub.Predict, pb.PredictRequest(key_id=key_id, model=MODEL, ciphertexts=ct))
        assert "malformed" in _refused(stub.DeleteKeys, pb.DeleteKeysRequest(key_id=key_id))
    _intact(node, sentinels, stored)
    resp = stub.Predict(pb.PredictRequest(key_id=owner.key_id, model=MODEL, ciphertexts=ct), timeout=60)
    assert len(resp.results) == 1


def test_model_ids_and_versions(setup):
    node, owner, lr, sentinels = setup
    stub = node.stub(owner.name)
    stored = support.stored_keys(node.keys_dir)
    ct = owner.encrypt(lr.X_test[:1])
    keys = owner.evaluation_keys()
    refs = [pb.ModelRef(model_id=name, version="1") for name in HOSTILE]
    refs += [pb.ModelRef(model_id=support.MODEL_ID, version=name) for name in HOSTILE if name]
    for ref in refs:
        assert "not a valid name" in _refused(stub.GetModelInfo, pb.GetModelInfoRequest(model=ref))
        assert "not a valid name" in _refused(stub.GetClientSpecs, pb.GetClientSpecsRequest(model=ref))
        assert "not a valid name" in _refused(
            stub.Predict, pb.PredictRequest(key_id=owner.key_id, model=ref, ciphertexts=ct))
        header = support.upload_header(keys)
        header.model.CopyFrom(ref)
        assert "not a valid name" in _refused(
            stub.UploadKeys, iter([pb.UploadKeysRequest(header=header), pb.UploadKeysRequest(chunk=keys)]))
    for name in HOSTILE:  # a filter over what is served: nothing matches, nothing is opened
        assert not stub.ListModels(pb.ListModelsRequest(model_id=name), timeout=30).models
    _intact(node, sentinels, stored)
    assert not list(node.keys_dir.glob(".upload-*"))


# ---- bundles ------------------------------------------------------------------------------------------
def _reseal(directory: Path, model_id: str) -> None:
    meta = json.loads((directory / MANIFEST).read_text())
    for key in ("kind", "format_version", "files"):
        meta.pop(key)
    meta["model_id"] = model_id
    write_manifest(directory, BUNDLE_KIND, list(BUNDLE_FILES), meta)
    sign_manifest(directory, support.signing_key())  # signed by mistake: the content checks must still refuse


def _with_member(src: Path, dst: Path, zip_name: str, member: str, mode: int | None = None,
                 data: bytes = b"planted") -> Path:
    """A copy of the bundle with one more member in one of its zips, under a valid (resealed) manifest."""
    shutil.copytree(src, dst)
    info = zipfile.ZipInfo(member)
    if mode is not None:
        info.external_attr = mode << 16
    with zipfile.ZipFile(dst / zip_name, "a") as zf:
        zf.writestr(info, data)
    assert member in zipfile.ZipFile(dst / zip_name).namelist()
    _reseal(dst, dst.name)
    return dst


def test_bundle_zip_members(setup, tmp_path):
    """A client.zip/server.zip with a member that is a path is refused by publish and, placed by hand, at load."""
    node, owner, lr, sentinels = setup
    marker = f"fedfhe-traversal-{uuid.uuid4().hex[:8]}"
    cases = {
        "evil-parent": ("server.zip", f"../{marker}", None),
        "evil-deep": ("server.zip", f"../../../../../../tmp/{marker}", None),
        "evil-absolute": ("server.zip", f"/tmp/{marker}", None),
        "evil-nested": ("server.zip", f"sub/../../{marker}", None),
        "evil-client": ("client.zip", f"../{marker}", None),
        "evil-link": ("server.zip", marker, 0o120777),
        "evil-dir": ("server.zip", f"{marker}/", 0o040755),
    }
    bundles = {name: _with_member(lr.directory, tmp_path / name, *case) for name, case in cases.items()}
    shutil.copytree(lr.directory, tmp_path / "plain-copy")
    _reseal(tmp_path / "plain-copy", "plain-copy")  # the control: the same bundle without the member
    for name, directory in bundles.items():
        with pytest.raises(IntegrityError, match="members differ from what FHEModelDev writes|not a plain file"):
            publish_bundle(directory, node.bundles_dir, load_verify_key(node.pki / "release.pub"))
        assert not (node.bundles_dir / name).exists()
    publish_bundle(tmp_path / "plain-copy", node.bundles_dir, load_verify_key(node.pki / "release.pub"))
    # placed straight into the bundles directory (bypassing publish): refused when the node loads them
    for name, directory in bundles.items():
        shutil.copytree(directory, node.bundles_dir / name / support.VERSION)
    offset = len(node.log_text())
    node.signal(__import__("signal").SIGHUP)
    stub = node.stub(owner.name)

    def scanned() -> bool:
        log = node.log_text()[offset:]
        return "serving plain-copy/1" in log and all(f"refused bundle {node.bundles_dir / n}" in log for n in bundles)

    wait_until(scanned, 60, "the node to rescan")
    for name in bundles:
        _refused(stub.GetModelInfo, pb.GetModelInfoRequest(model=pb.ModelRef(model_id=name)),
                 grpc.StatusCode.NOT_FOUND)
    assert stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(model_id="plain-copy")), timeout=30).version
    # where the members would land: next to Concrete's unpack dir (in the temp dir), or in the node's dirs
    planted = [*Path(tempfile.gettempdir()).glob(f"{marker}*"), *Path("/tmp").glob(f"{marker}*"),
               *node.work.rglob(f"{marker}*")]
    assert planted == []
    assert all(p.read_text() == "sentinel" for p in sentinels)
    for name in [*bundles, "plain-copy"]:
        shutil.rmtree(node.bundles_dir / name)


@pytest.mark.parametrize("what", ["file entry", "model id", "version"])
def test_bundle_manifest_names(setup, tmp_path, what):
    node, _, lr, sentinels = setup
    bundle = tmp_path / "bundle"
    shutil.copytree(lr.directory, bundle)
    body = json.loads((bundle / MANIFEST).read_text())
    if what == "file entry":
        (tmp_path / "server.zip").write_bytes((bundle / "server.zip").read_bytes())
        body["files"]["../server.zip"] = sha256_file(bundle / "server.zip")
    elif what == "model id":
        body["model_id"] = "../../victim"
    else:
        body["version"] = "../1"
    (bundle / MANIFEST).write_bytes(canonical_body(body))
    sign_manifest(bundle, support.signing_key())  # signed by mistake: still refused
    with pytest.raises(IntegrityError, match="must list exactly|invalid model_id|invalid version"):
        publish_bundle(bundle, node.bundles_dir, load_verify_key(node.pki / "release.pub"))
    assert all(p.read_text() == "sentinel" for p in sentinels)
    assert sorted(p.name for p in node.bundles_dir.iterdir()) == [support.MODEL_ID]
