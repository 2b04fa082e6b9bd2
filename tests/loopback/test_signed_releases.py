"""Signed releases: no host runs code or crypto parameters that another host chose.

Every hostile input is built from a real bundle: a ``configuration.json`` with a
jsonpickle ``py/reduce`` that writes a marker file, bundles signed by another key
or over other bytes, and a hostile inference node (a real gRPC server speaking the
fedfhe proto over mutual TLS) handing out swapped, weakened or booby-trapped
client specs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import shutil
import signal
import subprocess
import sys
import zipfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedfhe_common.contracts.manifest import MANIFEST, canonical_body, write_manifest
from fedfhe_common.pki.ca import issue
from fedfhe_common.pki.release import load_signing_key, load_verify_key, make_release_key, sign_manifest
from fedfhe_common.runtime.errors import FedfheError, IntegrityError
from fedfhe_common.runtime.procs import free_port, venv_bin, wait_until
from fedfhe_inference.bundles import publish_bundle
from fedfhe_owner.predict.encrypted import delete_keys, predict_rows
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(600)


def _rezip(data: bytes, member: str, edit: Any) -> bytes:
    """The same zip with one member's bytes replaced by ``edit(old_bytes)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            raw = src.read(info)
            dst.writestr(info.filename, edit(raw) if info.filename == member else raw)
    return out.getvalue()


def _json_edit(fn: Any) -> Any:
    def edit(raw: bytes) -> bytes:
        doc = json.loads(raw)
        fn(doc)
        return json.dumps(doc).encode()
    return edit


def _relabel(src: Path, dst: Path, model_id: str, key: Any | None, **zips: bytes) -> Path:
    """A copy of a real bundle under ``model_id``, with replaced zips, a fresh manifest, signed with ``key``."""
    shutil.copytree(src, dst)
    for name, data in zips.items():
        (dst / name.replace("_", ".")).write_bytes(data)
    meta = json.loads((dst / MANIFEST).read_text())
    for k in ("kind", "format_version", "files"):
        meta.pop(k)
    meta["model_id"] = model_id
    write_manifest(dst, "fedfhe-fhe-bundle", ["client.zip", "server.zip"], meta)
    (dst / "manifest.sig").unlink()
    if key is not None:
        sign_manifest(dst, key)
    return dst


def _reduce_payload(marker: Path) -> dict[str, Any]:
    """What jsonpickle turns into ``os.system("touch MARKER")`` when it decodes the configuration."""
    return {"py/reduce": [{"py/function": "posix.system"}, {"py/tuple": [f"touch {marker}"]}]}


def test_the_py_reduce_payload_is_real(tmp_path):
    """The control: Concrete's own decoder (jsonpickle) runs the payload used below."""
    marker = tmp_path / "ran"
    code = ("import jsonpickle, sys; jsonpickle.decode(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, json.dumps({"x": _reduce_payload(marker)})], check=True, timeout=60)
    assert marker.exists()


def _rescan_refuses(node, name: str, source: Path, reason: str) -> None:
    """Place a bundle by hand (as a hostile service user would), rescan, and see it refused with ``reason``."""
    shutil.copytree(source, node.bundles_dir / name / "1")
    offset = len(node.log_text())
    node.signal(signal.SIGHUP)
    wait_until(lambda: f"refused bundle {node.bundles_dir / name / '1'}" in node.log_text()[offset:], 60,
               f"the node to refuse {name}")
    assert reason in node.log_text()[offset:]
    with pytest.raises(grpc.RpcError) as info:
        node.stub("alice").GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(model_id=name)), timeout=20)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # `fedfhe-inference list` names it REFUSED with the reason, and exits 1 (not 0) while it is there.
    listed = subprocess.run([venv_bin("fedfhe-inference"), "list", "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and f"{name}/1: REFUSED: " in listed.stdout and reason in listed.stdout
    assert "digits-lr/1: ok" in listed.stdout and "bundle(s) refused" in listed.stderr
    shutil.rmtree(node.bundles_dir / name)


def _still_serving(node) -> None:
    info = node.stub("alice").GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(model_id="digits-lr")),
                                           timeout=20)
    assert info.model_id == "digits-lr"


def test_bundle_that_would_run_code_is_refused_signed_or_not(node, lr_bundles, pki, tmp_path):
    src = lr_bundles["1"].directory
    marker = tmp_path / "pwned"

    def plant(doc: dict[str, Any]) -> None:
        doc["parameter_selection_strategy"] = _reduce_payload(marker)

    server_zip = _rezip((src / "server.zip").read_bytes(), "configuration.json", _json_edit(plant))
    pub = load_verify_key(pki / "release.pub")
    unsigned = _relabel(src, tmp_path / "unsigned", "digits-evil", None, server_zip=server_zip)
    with pytest.raises(IntegrityError, match="not signed"):
        publish_bundle(unsigned, node.bundles_dir, pub)
    _rescan_refuses(node, "digits-evil", unsigned, "not signed")
    # signed by mistake with the real release key: the content check still refuses it
    signed = _relabel(src, tmp_path / "signed", "digits-evil", load_signing_key(pki / "release.key"),
                      server_zip=server_zip)
    with pytest.raises(IntegrityError, match="jsonpickle py/reduce of 'None' is not allowed|py/reduce"):
        publish_bundle(signed, node.bundles_dir, pub)
    _rescan_refuses(node, "digits-evil", signed, "is not allowed")
    assert not marker.exists()
    assert not (node.bundles_dir / "digits-evil").exists()
    _still_serving(node)


def test_signed_bundle_whose_circuit_carries_a_global_constructor_is_refused(node, lr_bundles, pki, tmp_path):
    """Issue 24: MLIR is code (Concrete compiles it and links libc). A constructor calling system(), added to a
    real bundle's circuit and signed with the real release key, is refused by publish and by the node's scan."""
    src = lr_bundles["1"].directory
    marker = tmp_path / "pwned"
    ctor = (f'  llvm.mlir.global internal constant @cmd("touch {marker}\\00") {{addr_space = 0 : i32}}\n'
            "  llvm.func @system(!llvm.ptr) -> i32\n"
            "  llvm.func @payload() {\n"
            "    %0 = llvm.mlir.addressof @cmd : !llvm.ptr\n"
            "    %1 = llvm.call @system(%0) : (!llvm.ptr) -> i32\n"
            "    llvm.return\n"
            "  }\n"
            "  llvm.mlir.global_ctors {ctors = [@payload], priorities = [0 : i32]}\n")
    server_zip = _rezip((src / "server.zip").read_bytes(), "circuit.mlir",
                        lambda raw: raw.replace(b"module {\n", b"module {\n" + ctor.encode(), 1))
    signed = _relabel(src, tmp_path / "signed", "digits-ctor", load_signing_key(pki / "release.key"),
                      server_zip=server_zip)
    with pytest.raises(IntegrityError, match=r"circuit\.mlir: line 2: not a statement Concrete ML emits"):
        publish_bundle(signed, node.bundles_dir, load_verify_key(pki / "release.pub"))
    _rescan_refuses(node, "digits-ctor", signed, "circuit.mlir: line 2")
    assert not marker.exists()
    _still_serving(node)


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("other-release")
    make_release_key(d)
    return load_signing_key(d / "release.key")


def test_bad_signatures_are_refused_by_publish_and_rescan(node, lr_bundles, pki, other_key, tmp_path):
    src = lr_bundles["1"].directory
    pub = load_verify_key(pki / "release.pub")
    by_other = _relabel(src, tmp_path / "other", "digits-other", other_key)
    other_bytes = _relabel(src, tmp_path / "bytes", "digits-bytes", None)
    (other_bytes / "manifest.sig").write_bytes((lr_bundles["2"].directory / "manifest.sig").read_bytes())
    missing = _relabel(src, tmp_path / "missing", "digits-missing", None)
    cases = [(by_other, "digits-other", "does not verify"), (other_bytes, "digits-bytes", "does not verify"),
             (missing, "digits-missing", "not signed")]
    for directory, name, reason in cases:
        with pytest.raises(IntegrityError, match=reason) as info:
            publish_bundle(directory, node.bundles_dir, pub)
        assert str(directory) in str(info.value)  # the refusal names the bundle
        _rescan_refuses(node, name, directory, reason)
    # the CLI says the same, with exit code 1 (a failed command; 2 is for usage errors)
    out = subprocess.run([venv_bin("fedfhe-inference"), "publish", "--config", str(node.config), str(by_other)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "does not verify with release key" in out.stderr and str(by_other) in out.stderr
    _still_serving(node)


# ---- a hostile inference node ---------------------------------------------------------------------------
class HostileNode(pb_grpc.InferenceServicer):
    """Speaks the real proto over mutual TLS and serves whatever bundle bytes a test gives it."""

    def __init__(self) -> None:
        self.client_zip = b""
        self.manifest = b""
        self.signature = b""
        self.schema = pb.SchemaSummary()
        self.calls: list[str] = []

    def _info(self) -> pb.ModelInfo:
        meta = json.loads(self.manifest)
        return pb.ModelInfo(model_id=meta["model_id"], version=meta["version"], schema=self.schema,
                            bundle_sha256=hashlib.sha256(self.manifest).hexdigest(),
                            client_zip_sha256=hashlib.sha256(self.client_zip).hexdigest(),
                            client_zip_bytes=len(self.client_zip), family="LogisticRegression", latest=True)

    def GetModelInfo(self, request, context):  # noqa: N802 - gRPC's name
        self.calls.append("GetModelInfo")
        return self._info()

    def ListModels(self, request, context):  # noqa: N802
        self.calls.append("ListModels")
        return pb.ListModelsResponse(models=[self._info()])

    def GetClientSpecs(self, request, context):  # noqa: N802
        self.calls.append("GetClientSpecs")
        info = self._info()
        return pb.ClientSpecs(model_id=info.model_id, version=info.version, client_zip=self.client_zip,
                              client_zip_sha256=info.client_zip_sha256, manifest=self.manifest,
                              manifest_signature=self.signature)

    def UploadKeys(self, request_iterator, context):  # noqa: N802
        self.calls.append("UploadKeys")
        context.abort(grpc.StatusCode.UNAVAILABLE, "a hostile node keeps what it gets")

    def Predict(self, request, context):  # noqa: N802
        self.calls.append("Predict")
        context.abort(grpc.StatusCode.UNAVAILABLE, "a hostile node keeps what it gets")


@pytest.fixture(scope="module")
def hostile(pki, node):
    servicer = HostileNode()
    real = node.stub("alice").GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(model_id="digits-lr",
                                                                                    version="1")), timeout=20)
    servicer.schema = real.schema
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_InferenceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([((pki / "inference.key").read_bytes(), (pki / "inference.crt").read_bytes())],
                                        root_certificates=(pki / "ca.crt").read_bytes(), require_client_auth=True)
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def _serve(servicer: HostileNode, directory: Path, client_zip: bytes | None = None) -> None:
    servicer.client_zip = client_zip if client_zip is not None else (directory / "client.zip").read_bytes()
    servicer.manifest = (directory / MANIFEST).read_bytes()
    servicer.signature = (directory / "manifest.sig").read_bytes()
    servicer.calls.clear()


def _refused(hostile, node, state: Path, digits, reason: str) -> str:
    servicer, address = hostile
    endpoint = dataclasses.replace(node.endpoint("carol"), address=address)
    with pytest.raises(FedfheError, match=reason) as info:
        predict_rows(endpoint, state, digits.X_test[:2], model_id="digits-lr", version="1", progress=False)
    assert "UploadKeys" not in servicer.calls and "Predict" not in servicer.calls  # not a row was encrypted
    assert not list(state.rglob("keyset.bin"))  # no keys were generated from these specs either
    return str(info.value)


def test_a_hostile_node_cannot_choose_the_owners_client_specs(hostile, node, lr_bundles, pki, other_key, digits,
                                                               tmp_path):
    servicer, _ = hostile
    v1, v2 = lr_bundles["1"].directory, lr_bundles["2"].directory
    key = load_signing_key(pki / "release.key")
    marker = tmp_path / "pwned"

    # 1. another version's client.zip with version 1's signed manifest (hashes announced consistently)
    _serve(servicer, v1, client_zip=(v2 / "client.zip").read_bytes())
    _refused(hostile, node, tmp_path / "s1", digits, "does not match the SHA-256 in the signed manifest")

    # 2. a manifest signed by another key
    _serve(servicer, _relabel(v1, tmp_path / "b2", "digits-lr", other_key))
    _refused(hostile, node, tmp_path / "s2", digits, "does not verify with release key")

    # 3. weakened crypto parameters, even signed with the real key: lweDimension 256, then a too-small variance
    def weaken(doc: dict[str, Any]) -> None:
        doc["keyset"]["lweSecretKeys"][0]["params"]["lweDimension"] = 256
        for gate in doc["circuits"][0]["inputs"] + doc["circuits"][0]["outputs"]:
            gate["typeInfo"]["lweCiphertext"]["encryption"]["lweDimension"] = 256

    def less_noise(doc: dict[str, Any]) -> None:
        for gate in doc["circuits"][0]["inputs"]:
            gate["typeInfo"]["lweCiphertext"]["encryption"]["variance"] /= 1e6

    for n, (edit, reason) in enumerate([(weaken, "dimension 256 is below 450"),
                                        (less_noise, "under Concrete's 128-bit security curve")]):
        zipped = _rezip((v1 / "client.zip").read_bytes(), "client.specs.json", _json_edit(edit))
        _serve(servicer, _relabel(v1, tmp_path / f"b3{n}", "digits-lr", key, client_zip=zipped))
        _refused(hostile, node, tmp_path / f"s3{n}", digits, reason)

    # 4. payloads Concrete ML would decode on the owner's host: pickle, and a skops archive naming os.system
    pickled = pickle.dumps(type(marker), protocol=4).hex()  # any pickle: it must never be decoded

    def with_pickle(doc: dict[str, Any]) -> None:
        doc["model_post_processing_params"] = {"type_name": "sklearn_model", "serialized_value": pickled}

    skops = io.BytesIO()
    with zipfile.ZipFile(skops, "w") as zf:
        zf.writestr("schema.json", json.dumps({"__class__": "system", "__module__": "os", "__loader__": "TypeNode",
                                               "protocol": 0}))

    def with_skops(doc: dict[str, Any]) -> None:
        doc["model_type"]["serialized_value"] = skops.getvalue().hex()

    for n, (edit, reason) in enumerate([(with_pickle, "serialized 'sklearn_model' is not allowed"),
                                        (with_skops, "names something other than a Concrete ML model class")]):
        zipped = _rezip((v1 / "client.zip").read_bytes(), "serialized_processing.json", _json_edit(edit))
        _serve(servicer, _relabel(v1, tmp_path / f"b4{n}", "digits-lr", key, client_zip=zipped))
        _refused(hostile, node, tmp_path / f"s4{n}", digits, reason)
    assert not marker.exists()


def test_an_owner_pins_each_model_version(hostile, node, lr_bundles, pki, digits, tmp_path):
    """The first manifest accepted for a version is the only one: other signed bytes later are refused."""
    servicer, _ = hostile
    state = tmp_path / "state"
    good = predict_rows(node.endpoint("carol"), state, digits.X_test[:1], model_id="digits-lr", version="1",
                        progress=False)
    assert len(good.predictions) == 1
    pinned = (state / "inference" / "digits-lr" / "1" / MANIFEST).read_bytes()
    # the same model version, re-compiled and correctly signed, served by another node: refused, named
    key = load_signing_key(pki / "release.key")
    other = _relabel(lr_bundles["2"].directory, tmp_path / "v2-as-v1", "digits-lr", key)
    meta = json.loads((other / MANIFEST).read_text())
    meta["version"] = "1"
    (other / MANIFEST).write_bytes(canonical_body(meta))
    sign_manifest(other, key)
    _serve(servicer, other)
    endpoint = dataclasses.replace(node.endpoint("carol"), address=hostile[1])
    with pytest.raises(FedfheError, match="digits-lr version 1 .*pinned|pinned at"):
        predict_rows(endpoint, state, digits.X_test[:1], model_id="digits-lr", version="1", progress=False)
    assert "GetClientSpecs" not in servicer.calls and "Predict" not in servicer.calls
    assert (state / "inference" / "digits-lr" / "1" / MANIFEST).read_bytes() == pinned


def _fresh_owner(node, name: str) -> str:
    """An owner certificate of this test's own: the node's per-owner key quota (4) is shared across the session,
    and the earlier tests leave keys under alice, bob, carol and dave."""
    issue(node.pki, name, client=True)
    return name


def test_an_owner_refuses_a_rollback_to_an_older_version(hostile, node, lr_bundles, pki, digits, tmp_path):
    """Issue 24: a node offering an older signed version as "latest" is refused, naming both versions; an owner
    that names the older version explicitly still gets it."""
    servicer, address = hostile
    state, owner = tmp_path / "state", _fresh_owner(node, "rollback-owner")
    newest = predict_rows(node.endpoint(owner), state, digits.X_test[:1], model_id="digits-lr", progress=False)
    assert newest.version not in ("", "1")  # the real node's latest (2, or a later one another test published)
    _serve(servicer, lr_bundles["1"].directory)  # a node that now says version 1 is the latest
    endpoint = dataclasses.replace(node.endpoint(owner), address=address)
    with pytest.raises(IntegrityError, match=r"offers version 1 as the latest of model digits-lr, but this owner has "
                                             rf"already used version {newest.version}.*--model-version 1"):
        predict_rows(endpoint, state, digits.X_test[:1], model_id="digits-lr", progress=False)
    assert "GetClientSpecs" not in servicer.calls and "Predict" not in servicer.calls
    pinned = predict_rows(node.endpoint(owner), state, digits.X_test[:1], model_id="digits-lr", version="1",
                          progress=False)
    assert pinned.version == "1" and len(pinned.predictions) == 1
    for version in ("1", newest.version):
        delete_keys(node.endpoint(owner), state, "digits-lr", version)


def test_a_server_zip_swapped_after_verification_never_reaches_a_worker(node, lr_bundles, pki, digits, tmp_path):
    """Issue 24: workers load the node's private copy of the verified bytes, not bundles_dir. A server.zip swapped
    in bundles_dir after the node verified the bundle (another valid circuit: version 2's) changes nothing."""
    key = load_signing_key(pki / "release.key")
    published = _relabel(lr_bundles["1"].directory, tmp_path / "swap", "digits-swap", key)
    dest, _ = publish_bundle(published, node.bundles_dir, load_verify_key(pki / "release.pub"))
    offset = len(node.log_text())
    node.signal(signal.SIGHUP)
    wait_until(lambda: "serving digits-swap/1" in node.log_text()[offset:], 60, "the node to serve digits-swap")
    (dest / "server.zip").chmod(0o644)
    (dest / "server.zip").write_bytes((lr_bundles["2"].directory / "server.zip").read_bytes())  # before any row
    state, rows, owner = tmp_path / "state", digits.X_test[:3], _fresh_owner(node, "swap-owner")
    try:
        swapped = predict_rows(node.endpoint(owner), state, rows, model_id="digits-swap", version="1",
                               progress=False)
        v1 = predict_rows(node.endpoint(owner), state, rows, model_id="digits-lr", version="1", progress=False)
        v2 = predict_rows(node.endpoint(owner), state, rows, model_id="digits-lr", version="2", progress=False)
    finally:
        for model, version in (("digits-swap", "1"), ("digits-lr", "1"), ("digits-lr", "2")):
            delete_keys(node.endpoint(owner), state, model, version)
        shutil.rmtree(node.bundles_dir / "digits-swap")
        node.signal(signal.SIGHUP)
    assert not (v1.scores == v2.scores).all()  # the swap would show: version 2's circuit scores differently
    assert (swapped.scores == v1.scores).all()  # what ran is the verified version 1
