"""Mutual TLS and ownership: who may talk to the node, whose keys they may use, which bundles it loads."""

from __future__ import annotations

import json
import shutil

import grpc
import pytest

from fedfhe_common.contracts.manifest import write_manifest
from fedfhe_common.pki.release import load_signing_key, load_verify_key, sign_manifest
from fedfhe_common.runtime.errors import IntegrityError
from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.bundles import publish_bundle
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(300)

V1 = pb.ModelRef(model_id="digits-lr", version="1")


def _info(stub) -> pb.ModelInfo:
    return stub.GetModelInfo(pb.GetModelInfoRequest(model=V1), timeout=20)


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired", "plaintext"])
def test_clients_without_a_valid_certificate_are_refused(node, foreign_pki, who):
    if who == "no certificate":
        stub = node.stub(None)
    elif who == "another CA":
        stub = node.stub("alice", pki=foreign_pki)
    elif who == "expired":
        stub = node.stub("expired")
    else:
        stub = pb_grpc.InferenceStub(grpc.insecure_channel(node.address))
    with pytest.raises(grpc.RpcError) as info:
        _info(stub)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: no RPC runs at all
    assert _info(node.stub("alice")).model_id == "digits-lr"  # and the node keeps serving


def test_a_server_certificate_cannot_act_as_an_owner(node):
    """Same CA, but issued for serverAuth only: not an owner identity."""
    with pytest.raises(grpc.RpcError) as info:
        _info(node.stub("inference"))
    assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE)


def test_owner_cannot_use_or_delete_another_owners_keys(node, alice, bob, digits):
    stolen = alice.key_ids["1"]
    ct = bob.encrypt(digits.X_test[:1], "1")
    bob_stub = node.stub("bob")
    for call, request in (
        (bob_stub.Predict, pb.PredictRequest(key_id=stolen, model=V1, ciphertexts=ct)),
        (bob_stub.DeleteKeys, pb.DeleteKeysRequest(key_id=stolen)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "another owner" in info.value.details()
    # alice's keys are untouched and still hers
    ct_a = alice.encrypt(digits.X_test[:1], "1")
    resp = node.stub("alice").Predict(pb.PredictRequest(key_id=stolen, model=V1, ciphertexts=ct_a), timeout=60)
    assert len(resp.results) == 1
    # bob cannot even decrypt what alice's request produced with his own key
    mine = alice.fhe("1").deserialize_decrypt_dequantize(resp.results[0])
    his = bob.fhe("1").deserialize_decrypt_dequantize(resp.results[0])
    assert abs(float(mine.sum()) - 1) < 1e-6
    assert mine.argmax() == int(digits.y_test[0]) and (his != mine).any()


def _tampered_copy(src, dst, model_id: str, pki):
    """A bundle re-labelled as ``model_id`` with a valid, signed manifest, then its circuit altered."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "manifest.json").read_text())
    meta["model_id"] = model_id
    for k in ("kind", "format_version", "files"):
        meta.pop(k)
    write_manifest(dst, "fedfhe-fhe-bundle", ["client.zip", "server.zip"], meta)
    sign_manifest(dst, load_signing_key(pki / "release.key"))
    data = bytearray((dst / "server.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "server.zip").write_bytes(bytes(data))
    return dst


def test_bundle_with_a_mismatching_manifest_is_refused(node, lr_bundles, tmp_path, pki):
    bad = _tampered_copy(lr_bundles["1"].directory, tmp_path / "bad", "digits-tampered", pki)
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        publish_bundle(bad, node.bundles_dir, load_verify_key(pki / "release.pub"))
    # placed straight into the bundles directory (bypassing publish), it is refused at load
    shutil.copytree(bad, node.bundles_dir / "digits-tampered" / "1")
    node.signal(__import__("signal").SIGHUP)
    wait_until(lambda: "refused bundle" in node.log_text() and "digits-tampered" in node.log_text(), 60,
               "the node to refuse the tampered bundle")
    with pytest.raises(grpc.RpcError) as info:
        node.stub("alice").GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(model_id="digits-tampered")),
                                        timeout=20)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert _info(node.stub("alice")).model_id == "digits-lr"
    shutil.rmtree(node.bundles_dir / "digits-tampered")


def test_client_checks_the_specs_it_receives(node, alice):
    """GetClientSpecs returns exactly the client.zip whose hash GetModelInfo announced."""
    import hashlib

    stub = node.stub("alice")
    info = _info(stub)
    specs = stub.GetClientSpecs(pb.GetClientSpecsRequest(model=V1), timeout=20)
    assert hashlib.sha256(specs.client_zip).hexdigest() == info.client_zip_sha256 == specs.client_zip_sha256
    from fedfhe_common.contracts.bundle_content import check_client_zip

    check_client_zip(specs.client_zip)
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("client.specs.json", "{}")
        zf.writestr("../evil.py", "import os")
    from fedfhe_common.runtime.errors import FedfheError

    with pytest.raises(FedfheError, match="unexpected"):
        check_client_zip(buf.getvalue())
