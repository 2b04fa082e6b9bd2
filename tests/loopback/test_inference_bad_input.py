"""Every bad input gets its own gRPC status code and a message, and the node serves the next good request."""

from __future__ import annotations

import hashlib
import uuid

import grpc
import numpy as np
import pytest

from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(300)

V1 = pb.ModelRef(model_id="digits-lr", version="1")
V2 = pb.ModelRef(model_id="digits-lr", version="2")


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=60, **kwargs)
    return info.value.code(), info.value.details()


@pytest.fixture
def good(node, alice, digits):
    """A good request that must succeed after each bad one: the node is still serving."""
    stub = node.stub("alice")
    ct = alice.encrypt(digits.X_test[:1], "1")
    expected = int(digits.y_test[0])

    def check() -> None:
        resp = stub.Predict(pb.PredictRequest(key_id=alice.key_ids["1"], model=V1, ciphertexts=ct), timeout=60)
        scores = alice.fhe("1").deserialize_decrypt_dequantize(resp.results[0])
        assert int(np.argmax(scores)) == expected

    return check


def _upload(stub, header: pb.UploadHeader | None, chunks: list[bytes]):
    def gen():
        if header is not None:
            yield pb.UploadKeysRequest(header=header)
        for c in chunks:
            yield pb.UploadKeysRequest(chunk=c)

    return stub.UploadKeys(gen(), timeout=60)


def _header(data: bytes, model: pb.ModelRef = V1, total: int | None = None, sha: str | None = None) -> pb.UploadHeader:
    return pb.UploadHeader(model=model, total_bytes=len(data) if total is None else total,
                           sha256=hashlib.sha256(data).hexdigest() if sha is None else sha)


def test_predict_bad_inputs(node, alice, digits, good):
    stub = node.stub("alice")
    key1, key2 = alice.key_ids["1"], alice.key_ids["2"]
    ct1 = alice.encrypt(digits.X_test[:2], "1")
    cases = [
        ("garbage ciphertext", pb.PredictRequest(key_id=key1, model=V1, ciphertexts=[b"\x00garbage" * 50]),
         grpc.StatusCode.INVALID_ARGUMENT, "row 0: not a ciphertext of this model's input"),
        ("a later garbage row", pb.PredictRequest(key_id=key1, model=V1, ciphertexts=[ct1[0], ct1[1][:100]]),
         grpc.StatusCode.INVALID_ARGUMENT, "row 1"),
        ("unknown key id", pb.PredictRequest(key_id=uuid.uuid4().hex, model=V1, ciphertexts=ct1),
         grpc.StatusCode.NOT_FOUND, "no evaluation keys"),
        ("path traversal key id", pb.PredictRequest(key_id="../../etc/passwd", model=V1, ciphertexts=ct1),
         grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        ("ciphertext for another model version", pb.PredictRequest(key_id=key2, model=V2, ciphertexts=ct1),
         grpc.StatusCode.INVALID_ARGUMENT, "row 0: not a ciphertext of this model's input"),
        ("keys of another model version", pb.PredictRequest(key_id=key1, model=V2, ciphertexts=ct1),
         grpc.StatusCode.FAILED_PRECONDITION, "serves digits-lr version(s) 1, not digits-lr version 2"),
        ("empty batch", pb.PredictRequest(key_id=key1, model=V1, ciphertexts=[]),
         grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        ("batch over limit", pb.PredictRequest(key_id=key1, model=V1, ciphertexts=[ct1[0]] * 33),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit of 32"),
        ("unknown model", pb.PredictRequest(key_id=key1, model=pb.ModelRef(model_id="nope", version="1"),
                                            ciphertexts=ct1),
         grpc.StatusCode.NOT_FOUND, "no model 'nope'"),
        ("unknown version", pb.PredictRequest(key_id=key1, model=pb.ModelRef(model_id="digits-lr", version="99"),
                                              ciphertexts=ct1),
         grpc.StatusCode.NOT_FOUND, "no version '99'"),
    ]
    for what, request, code, message in cases:
        got, details = _code(stub.Predict, request)
        assert (got, message in details) == (code, True), f"{what}: {got} {details!r}"
        good()


def test_upload_bad_streams(node, alice, good):
    stub = node.stub("alice")
    keys = alice.fhe("1").get_serialized_evaluation_keys()
    junk = b"not evaluation keys at all" * 10
    cases = [
        ("truncated key stream", _header(keys + keys, total=2 * len(keys)), [keys],
         grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        ("stream longer than declared", _header(keys, total=len(keys)), [keys, keys],
         grpc.StatusCode.INVALID_ARGUMENT, "longer than"),
        ("declared size over the node's limit", _header(keys, total=200 << 20), [keys],
         grpc.StatusCode.INVALID_ARGUMENT, "takes at most"),  # the circuit sets the size, not a fixed cap
        ("chunk over the chunk limit", _header(keys), [b"x" * (3 << 20)],
         grpc.StatusCode.INVALID_ARGUMENT, "chunk limit"),
        ("hash mismatch", _header(keys, sha="0" * 64), [keys], grpc.StatusCode.DATA_LOSS, "does not match"),
        ("bytes that are not keys", _header(junk), [junk], grpc.StatusCode.INVALID_ARGUMENT,
         "not this model's evaluation keys"),
        ("no header", None, [keys], grpc.StatusCode.INVALID_ARGUMENT, "must start with an UploadHeader"),
        ("two headers", _header(keys), [], grpc.StatusCode.INVALID_ARGUMENT, "only one UploadHeader"),
        ("no version", _header(keys, model=pb.ModelRef(model_id="digits-lr")), [keys],
         grpc.StatusCode.INVALID_ARGUMENT, "version"),
        ("unknown model", _header(keys, model=pb.ModelRef(model_id="nope", version="1")), [keys],
         grpc.StatusCode.NOT_FOUND, "no model"),
    ]
    for what, header, chunks, code, message in cases:
        if what == "two headers":
            def gen(h=header):
                yield pb.UploadKeysRequest(header=h)
                yield pb.UploadKeysRequest(header=h)

            got, details = _code(stub.UploadKeys, gen())
        else:
            got, details = _code(_upload_call(stub, header, chunks))
        assert (got, message in details) == (code, True), f"{what}: {got} {details!r}"
        good()
    # nothing half-written was left behind, and no key was recorded for those streams
    assert not list(node.keys_dir.glob(".upload-*"))


def _upload_call(stub, header, chunks):
    def call(timeout: float):
        return _upload(stub, header, chunks)

    return call


def test_quota_and_delete(node, digits, tmp_path, good):
    """An owner holds at most max_keys_per_owner key sets; deleting one frees a slot."""
    from fedfhe_owner.predict.encrypted import predict_rows

    stub = node.stub("dave")
    predict_rows(node.endpoint("dave"), tmp_path / "c", digits.X_test[:1], model_id="digits-lr", version="1",
                 progress=False)
    from fedfhe_owner.predict.keys import ModelKeys

    keys = ModelKeys(tmp_path / "c", "digits-lr", "1").fhe_client()[0].get_serialized_evaluation_keys()
    held = [r.key_id for r in _list_keys(node, "dave")]
    ids = []
    while len(held) + len(ids) < 4:
        ids.append(_upload(stub, _header(keys), [keys]).key_id)
    got, details = _code(_upload_call(stub, _header(keys), [keys]))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 4" in details
    good()
    resp = stub.DeleteKeys(pb.DeleteKeysRequest(key_id=ids[0]), timeout=30)
    assert resp.key_id == ids[0] and resp.bytes_freed == len(keys)
    assert not (node.keys_dir / f"{ids[0]}.evk").exists()
    got, _ = _code(stub.DeleteKeys, pb.DeleteKeysRequest(key_id=ids[0]))
    assert got == grpc.StatusCode.NOT_FOUND
    new = _upload(stub, _header(keys), [keys]).key_id  # the freed slot is usable again
    for key_id in [new, *ids[1:]]:
        stub.DeleteKeys(pb.DeleteKeysRequest(key_id=key_id), timeout=30)


def _list_keys(node, owner: str):
    import json

    from fedfhe_inference.keystore import KeyRecord

    out = []
    for meta in node.keys_dir.glob("*.json"):
        record = KeyRecord.from_dict(json.loads(meta.read_text()))
        if record.owner == owner:
            out.append(record)
    return out
