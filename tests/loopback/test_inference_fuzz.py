"""Fuzz every RPC of a live inference node: hostile messages get a clean gRPC status, the node keeps serving.

A real `fedfhe-inference serve` process serves the digits LR bundle. A "fuzzer"
owner (its own certificate, its own uploaded keys) sends random and mutated
messages to every RPC: random bytes and mutated real ciphertexts, random key
ids/model ids/versions (path traversal included; AttachKeys and DeleteKeys with them), random UploadKeys part
sequences (headers and chunks in any order, sizes and hashes that do or do not
match, mutated real keys), and random bytes sent as the raw request message.

Every call has a client deadline. Each outcome must be a response or a status
the service gives on purpose, with a message (never INTERNAL from the servicer,
UNKNOWN, DEADLINE_EXCEEDED or UNAVAILABLE); the process must be alive after
each call; at the end another owner's good request still decrypts correctly.
FEDFHE_FUZZ_SCALE multiplies the example counts (tests/support/fuzzing.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import grpc
import inference_support as support
import numpy as np
import pytest
from fuzzing import SCALE, fuzz_settings, mutated
from hypothesis import given
from hypothesis import strategies as st

from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(180 * SCALE)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
DEADLINE = 30.0
# What the service answers on purpose (each with a message).
SERVICE_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DATA_LOSS,
}
# grpcio's own answer when the bytes are not a message of the method's type (the servicer never runs).
UNPARSABLE = (grpc.StatusCode.INTERNAL, "Exception deserializing request!")
METHODS = {
    "ListModels": "unary", "GetModelInfo": "unary", "GetClientSpecs": "unary", "UploadKeys": "stream",
    "Predict": "unary", "DeleteKeys": "unary", "AttachKeys": "unary",
}
HOSTILE = ["../victim", "../../etc/passwd", "/etc/passwd", "..", ".", "a/../b", "..\\x", "x\x00y", "%2e%2e%2f",
           "x" * 300, "digits-lr\n", "digits-lr/../digits-lr", " digits-lr"]

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=70)  # protobuf strings are valid UTF-8
names = st.one_of(st.sampled_from([support.MODEL_ID, "", "nope", *HOSTILE]), text)
versions = st.one_of(st.sampled_from(["1", "", "2", "99", "../1", "1\n"]), text)
model_refs = st.one_of(st.just(MODEL), st.builds(pb.ModelRef, model_id=names, version=versions))
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)


@st.composite
def mostly(draw: st.DrawFn, value: Any, other: st.SearchStrategy) -> Any:
    """``value`` about four times in five: the fuzzing then gets past the first checks to the deep paths."""
    return value if draw(st.integers(0, 9)) < 8 else draw(other)


@dataclass
class Target:
    node: Any
    good: support.Owner
    fuzzer: support.Owner
    stub: Any  # the fuzzer's
    channel: grpc.Channel
    ciphertexts: list[bytes]
    keys: bytes
    lr: support.LrBundle


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    lr = support.lr_bundle(tmp_path_factory)
    work = tmp_path_factory.mktemp("fuzz-node")
    pki = support.make_pki(work / "pki", ("owner-0", "owner-1"))
    node = support.start_node(work / "node", pki, (lr.directory,))
    good = support.make_owner(node, "owner-0", work / "owner-0-state", lr.X_test)
    fuzzer = support.make_owner(node, "owner-1", work / "owner-1-state", lr.X_test)
    channel = node.channel("owner-1")
    from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

    yield Target(node, good, fuzzer, pb_grpc.InferenceStub(channel), channel, fuzzer.encrypt(lr.X_test[:3]),
                 fuzzer.evaluation_keys(), lr)
    channel.close()
    node.stop()


def clean(target: Target, call: Any, request: Any, raw: bool = False) -> Any:
    """The call's response, or None after a status the service gives on purpose; anything else fails."""
    try:
        return call(request, timeout=DEADLINE)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        assert details, f"{code} without a message"
        if raw and (code, details) == UNPARSABLE:
            return None
        assert code in SERVICE_CODES, f"{code}: {details}"
        return None
    finally:
        target.node.alive()


def ciphertext_lists(target: Target) -> st.SearchStrategy[list[bytes]]:
    mutants = st.one_of(*(mutated(ct, tokens=False) for ct in target.ciphertexts))
    one = st.one_of(st.sampled_from(target.ciphertexts), mutants, mutants, st.binary(max_size=2048))
    return st.one_of(st.lists(one, min_size=1, max_size=6), st.lists(one, min_size=1, max_size=6),
                     st.lists(one, max_size=1), st.lists(st.binary(max_size=8), min_size=33, max_size=34))


def test_predict(target):
    @fuzz_settings(500)
    @given(st.data())
    def run(data):
        key_id = data.draw(mostly(target.fuzzer.key_id, st.one_of(st.just(target.good.key_id), hex32, text,
                                                                   st.sampled_from(HOSTILE))))
        model = data.draw(mostly(MODEL, model_refs))
        cts = data.draw(ciphertext_lists(target))
        resp = clean(target, target.stub.Predict, pb.PredictRequest(key_id=key_id, model=model, ciphertexts=cts))
        if resp is not None:
            assert len(resp.results) == len(cts)

    run()


@st.composite
def upload_parts(draw: st.DrawFn, keys: bytes) -> tuple[list[pb.UploadKeysRequest], bytes]:
    data = draw(st.one_of(st.just(keys), mutated(keys, tokens=False), st.binary(max_size=4096)))
    consistent = draw(st.booleans())
    header = pb.UploadHeader(
        model=draw(mostly(MODEL, model_refs)),
        total_bytes=len(data) if consistent else draw(st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 9000))),
        sha256=hashlib.sha256(data).hexdigest() if consistent else draw(st.one_of(text, hex32, st.just("0" * 64))),
    )
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    parts = [pb.UploadKeysRequest(header=header)] + [pb.UploadKeysRequest(chunk=c) for c in chunks]
    for _ in range(draw(st.integers(0, 2))):  # reorder: drop, duplicate or move parts (headers included)
        op = draw(st.sampled_from(["drop", "dup", "swap"]))
        i = draw(st.integers(0, len(parts) - 1))
        if op == "drop":
            del parts[i]
        elif op == "dup":
            parts.insert(draw(st.integers(0, len(parts))), parts[i])
        elif len(parts) > 1:
            j = draw(st.integers(0, len(parts) - 1))
            parts[i], parts[j] = parts[j], parts[i]
    return parts, data


def test_upload_keys(target):
    @fuzz_settings(300)
    @given(upload_parts(target.keys))
    def run(drawn):
        parts, data = drawn
        resp = clean(target, target.stub.UploadKeys, iter(parts))
        if resp is not None:  # accepted: whole, hash-checked keys (mutations Concrete still parses included)
            assert resp.sha256 == hashlib.sha256(data).hexdigest() and resp.bytes_received == len(data)
            target.stub.DeleteKeys(pb.DeleteKeysRequest(key_id=resp.key_id), timeout=DEADLINE)

    run()


def test_info_specs_list_delete(target):
    @fuzz_settings(200)
    @given(st.data())
    def run(data):
        method = data.draw(st.sampled_from(["ListModels", "GetModelInfo", "GetClientSpecs", "DeleteKeys",
                                            "AttachKeys"]))
        if method == "ListModels":
            clean(target, target.stub.ListModels, pb.ListModelsRequest(model_id=data.draw(names)))
        elif method == "GetModelInfo":
            clean(target, target.stub.GetModelInfo, pb.GetModelInfoRequest(model=data.draw(model_refs)))
        elif method == "GetClientSpecs":
            clean(target, target.stub.GetClientSpecs, pb.GetClientSpecsRequest(model=data.draw(model_refs)))
        elif method == "DeleteKeys":  # never the fuzzer's own key (that would be a legitimate delete)
            key_id = data.draw(st.one_of(st.just(target.good.key_id), hex32, text, st.sampled_from(HOSTILE)))
            model = data.draw(st.one_of(st.none(), model_refs))
            clean(target, target.stub.DeleteKeys, pb.DeleteKeysRequest(key_id=key_id, model=model))
        else:  # the fuzzer's own keys too: attaching them to their own (only) version changes nothing
            key_id = data.draw(st.one_of(st.just(target.fuzzer.key_id), st.just(target.good.key_id), hex32, text,
                                         st.sampled_from(HOSTILE)))
            claimed = data.draw(st.one_of(st.just(""), hex32, text, st.just("0" * 64)))
            clean(target, target.stub.AttachKeys, pb.AttachKeysRequest(key_id=key_id, model=data.draw(model_refs),
                                                                       key_params_sha256=claimed))

    run()


def _seed_messages(target: Target) -> dict[str, bytes]:
    header = support.upload_header(target.keys)
    return {
        "ListModels": pb.ListModelsRequest(model_id=support.MODEL_ID).SerializeToString(),
        "GetModelInfo": pb.GetModelInfoRequest(model=MODEL).SerializeToString(),
        "GetClientSpecs": pb.GetClientSpecsRequest(model=MODEL).SerializeToString(),
        "UploadKeys": pb.UploadKeysRequest(header=header).SerializeToString(),
        "Predict": pb.PredictRequest(key_id=target.fuzzer.key_id, model=MODEL,
                                     ciphertexts=target.ciphertexts[:1]).SerializeToString(),
        # a key id that does not exist: a mutation must not delete the fuzzer's real keys by chance
        "DeleteKeys": pb.DeleteKeysRequest(key_id="0" * 32).SerializeToString(),
        "AttachKeys": pb.AttachKeysRequest(key_id="0" * 32, model=MODEL).SerializeToString(),
    }


def test_raw_bytes_as_request_messages(target):
    """Bytes that may or may not parse as the method's request type, sent past the stubs' serializers."""
    seeds = _seed_messages(target)

    @fuzz_settings(400)
    @given(st.data())
    def run(data):
        method = data.draw(st.sampled_from(sorted(METHODS)))
        path = f"/fedfhe.inference.v1.Inference/{method}"
        payload = st.one_of(st.binary(max_size=512), mutated(seeds[method], tokens=False),
                            mutated(seeds[method], tokens=False), st.just(seeds[method]))
        if METHODS[method] == "stream":
            messages = data.draw(st.lists(payload, max_size=4))
            resp = clean(target, target.channel.stream_unary(path), iter(messages), raw=True)
            if resp is not None:
                key_id = pb.UploadKeysResponse.FromString(resp).key_id
                target.stub.DeleteKeys(pb.DeleteKeysRequest(key_id=key_id), timeout=DEADLINE)
        else:
            clean(target, target.channel.unary_unary(path), data.draw(payload), raw=True)

    run()


def _inflated(message: bytes, factor: int = 1 << 16) -> bytes:
    """The same bytes with the first segment's size in the Cap'n Proto segment table multiplied."""
    size = int.from_bytes(message[4:8], "little")
    return message[:4] + (size * factor).to_bytes(4, "little") + message[8:]


def test_found_by_the_fuzzer_bytes_announcing_gigabytes(target):
    """Regression: a 1.8 kB ciphertext (or 64 bytes of keys) whose segment table announces gigabytes made
    Concrete's parser fail per 8 KiB it could not read, holding the GIL: the node stood still for minutes.
    Now refused before the parser sees it."""
    stub, fuzzer = target.stub, target.fuzzer
    ct = target.ciphertexts[0]
    for bad in (_inflated(ct), ct[:210], _inflated(ct)[:100]):
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(pb.PredictRequest(key_id=fuzzer.key_id, model=MODEL, ciphertexts=[ct, bad]), timeout=DEADLINE)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "row 1: not a ciphertext of this model's input" in info.value.details()
    keys = _inflated(target.keys, 1 << 20) if len(target.keys) > 8 else target.keys
    with pytest.raises(grpc.RpcError) as info:
        stub.UploadKeys(iter([pb.UploadKeysRequest(header=support.upload_header(keys)),
                              pb.UploadKeysRequest(chunk=keys)]), timeout=DEADLINE)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "not this model's evaluation keys" in info.value.details() or "takes at most" in info.value.details()


def test_node_still_serves_after_the_fuzzing(target):
    node, good, fuzzer, lr = target.node, target.good, target.fuzzer, target.lr
    X = lr.X_test[:4]
    for owner in (good, fuzzer):
        resp = node.stub(owner.name).Predict(
            pb.PredictRequest(key_id=owner.key_id, model=MODEL, ciphertexts=owner.encrypt(X)), timeout=60)
        np.testing.assert_allclose(owner.decrypt(resp.results), lr.model.predict_proba(X, fhe="simulate"),
                                   atol=1e-9)
    # the fuzzing left no key behind (accepted uploads were deleted), no temp file, no servicer crash
    evks = sorted(p.stem for p in node.keys_dir.glob("*.evk"))
    assert evks == sorted([good.key_id, fuzzer.key_id])
    assert not list(node.keys_dir.glob(".upload-*"))
    assert not re.search(r"\w+ from \S+ failed", node.log_text()), "the servicer hit an unexpected exception"
