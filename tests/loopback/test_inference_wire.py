"""Crafted Concrete keys and ciphertexts (issue 10): refused against the circuit, crashes contained in workers.

Each crash class found against the node (odd blob splits, parameters announcing more than the payload,
a flipped byte in genuine keys, a real ciphertext re-split into 2-3 blobs, millions of zero-size list
elements, padded keys, stored keys that crash at the first Predict) is one test here; on the code before
fhe_wire.py and the sandbox each of them killed or froze the node. Then a structure-aware fuzz run:
fixed seed plus a short random part (FEDFHE_FUZZ_SCALE multiplies it; bench/fuzz_wire.py runs it long).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time

import concrete_wire as cw
import grpc
import inference_support as support
import numpy as np
import pytest
from fuzzing import SCALE
from inference_support import lr_fixture  # noqa: F401 - the lr fixture

from fedfhe_common.contracts.fhe_wire import CircuitSpec, WireError, read_value
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(300 * SCALE)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DATA_LOSS,
         grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture(scope="module")
def spec(lr):
    return CircuitSpec.from_client_zip((lr.directory / "client.zip").read_bytes())


@pytest.fixture(scope="module")
def target(tmp_path_factory, lr):
    work = tmp_path_factory.mktemp("wire-node")
    pki = support.make_pki(work / "pki", ("owner-0", "owner-1"))
    node = support.start_node(work / "node", pki, (lr.directory,))
    good = support.make_owner(node, "owner-0", work / "owner-0-state", lr.X_test)
    hostile = support.make_owner(node, "owner-1", work / "owner-1-state", lr.X_test)
    yield node, good, hostile
    node.stop()


def _upload(node, owner, data: bytes, total: int | None = None):
    stub = node.stub(owner.name)
    parts = [pb.UploadKeysRequest(header=support.upload_header(data, total))]
    parts += [pb.UploadKeysRequest(chunk=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    return stub.UploadKeys(iter(parts), timeout=60)


def _refused(call, *args, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def _still_serves(node, owner, lr) -> None:
    X = lr.X_test[:2]
    resp = node.stub(owner.name).Predict(pb.PredictRequest(key_id=owner.key_id, model=MODEL,
                                                           ciphertexts=owner.encrypt(X)), timeout=120)
    np.testing.assert_allclose(owner.decrypt(resp.results), lr.model.predict_proba(X, fhe="simulate"), atol=1e-9)


# ---- the checker alone -------------------------------------------------------------------------------
def test_genuine_keys_ciphertexts_and_results_pass(target, spec, lr):
    node, good, _ = target
    spec.check_evaluation_keys(good.evaluation_keys())
    ct = good.encrypt(lr.X_test[:1])[0]
    spec.check_input(ct)
    resp = node.stub(good.name).Predict(pb.PredictRequest(key_id=good.key_id, model=MODEL, ciphertexts=[ct]),
                                        timeout=60)
    spec.check_output(resp.results[0])
    raw, payload = read_value(ct)
    spec.check_input(cw.value(raw["rawInfo"], raw["typeInfo"], [payload]))  # the fuzzer's builder: valid messages
    spec.check_evaluation_keys(cw.keyset({}))


def test_every_single_bit_flip_of_genuine_keys_is_refused(target, spec):
    keys = target[1].evaluation_keys()
    for bit in range(8 * len(keys)):
        flipped = bytearray(keys)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireError):
            spec.check_evaluation_keys(bytes(flipped))


# ---- one test per crash class, against the node ------------------------------------------------------
def _crafted_keys() -> dict[str, bytes]:
    full = bytes(8 * cw.w.key_payload_words("lweBootstrapKeys", cw.BSK_INFO))
    huge = json.loads(json.dumps(cw.BSK_INFO))
    huge["params"]["polynomialSize"] = 1 << 24
    return {
        "blobs not whole elements": cw.keyset({"lweBootstrapKeys": [cw.bootstrap_key(blobs=cw.split(full, [13, 77]))]}),
        "parameters announce more than the payload": cw.keyset(
            {"lweBootstrapKeys": [cw.bootstrap_key(huge, [bytes(64)])]}),
        "millions of zero-size elements": cw.keyset({"lweBootstrapKeys": (cw.ZERO_SIZE, 1 << 24)}),
    }


@pytest.mark.parametrize("name", sorted(_crafted_keys()))
def test_crafted_keys_are_refused_at_upload_and_never_stored(target, lr, name):
    node, good, hostile = target
    before = support.stored_keys(node.keys_dir)
    details = _refused(_upload, node, hostile, _crafted_keys()[name])
    assert "evaluation keys" in details
    assert support.stored_keys(node.keys_dir) == before
    _still_serves(node, good, lr)


def test_a_flipped_byte_in_genuine_keys_is_refused(target, lr):
    node, good, hostile = target
    keys = bytearray(hostile.evaluation_keys())
    for at in (12, 20, 44, 60):
        bad = bytearray(keys)
        bad[at] ^= 0x40
        _refused(_upload, node, hostile, bytes(bad))
    _still_serves(node, good, lr)


def test_padded_keys_are_refused_by_the_circuits_size(target, lr):
    node, good, hostile = target
    keys = hostile.evaluation_keys()
    details = _refused(_upload, node, hostile, keys + bytes(64 << 10), 512 << 20)  # the header alone is refused
    assert "takes at most" in details
    _refused(_upload, node, hostile, keys + bytes(64 << 10))
    _still_serves(node, good, lr)


@pytest.mark.parametrize("cuts", [[8], [700], [5, 1001], [1535]])
def test_a_real_ciphertext_split_into_several_blobs_is_refused(target, lr, cuts):
    node, good, hostile = target
    ct = hostile.encrypt(lr.X_test[:1])[0]
    value, payload = read_value(ct)
    bad = cw.value(value["rawInfo"], value["typeInfo"], cw.split(payload, cuts))
    details = _refused(node.stub(hostile.name).Predict,
                       pb.PredictRequest(key_id=hostile.key_id, model=MODEL, ciphertexts=[ct, bad]), 60)
    assert details.startswith("row 1:")
    _still_serves(node, good, lr)


def test_zero_size_elements_in_a_ciphertext_are_refused(target, lr):
    node, good, hostile = target
    ct = hostile.encrypt(lr.X_test[:1])[0]
    value, payload = read_value(ct)
    raw = json.loads(json.dumps(value["rawInfo"]))
    raw["shape"]["dimensions"] = [1 << 20, 1 << 20, 3]
    bad = cw.value(raw, value["typeInfo"], [payload])
    _refused(node.stub(hostile.name).Predict, pb.PredictRequest(key_id=hostile.key_id, model=MODEL,
                                                                ciphertexts=[bad]), 60)
    _still_serves(node, good, lr)


def test_a_crashed_worker_is_replaced_and_the_call_gets_a_status(target, lr):
    node, good, _ = target
    pids = node.worker_pids()
    assert pids, "the node runs no FHE worker processes"
    for pid in pids:
        os.kill(pid, signal.SIGSEGV)
    seen = []
    for _ in range(len(pids) + 3):
        try:
            _still_serves(node, good, lr)
            seen.append("OK")
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INTERNAL, exc.details()
            assert "SIGSEGV" in exc.details() and "replaced" in exc.details()
            seen.append(exc.details())
    assert seen[-1] == "OK", seen
    node.alive()
    assert set(node.worker_pids()).isdisjoint(pids)


def test_stored_keys_that_fail_are_quarantined_across_restarts(target, lr):
    """Keys on disk from before these checks (or damaged there): refused naming them, never loaded again."""
    node, good, hostile = target
    node.stop()
    bad = _crafted_keys()["blobs not whole elements"]
    key_id = "ab" * 16
    (node.keys_dir / f"{key_id}.evk").write_bytes(bad)
    (node.keys_dir / f"{key_id}.json").write_text(json.dumps({
        "key_id": key_id, "owner": hostile.name, "model_id": support.MODEL_ID, "version": support.VERSION,
        "size": len(bad), "sha256": hashlib.sha256(bad).hexdigest(), "created_at": time.time()}))
    node.start()
    request = pb.PredictRequest(key_id=key_id, model=MODEL, ciphertexts=hostile.encrypt(lr.X_test[:1]))
    details = _refused(node.stub(hostile.name).Predict, request, 60, code=grpc.StatusCode.FAILED_PRECONDITION)
    assert key_id in details and "quarantined" in details
    assert (node.keys_dir / f"{key_id}.quarantine").is_file()
    node.stop()
    node.start()
    details = _refused(node.stub(hostile.name).Predict, request, 60, code=grpc.StatusCode.FAILED_PRECONDITION)
    assert key_id in details and "quarantined" in details
    node.stub(hostile.name).DeleteKeys(pb.DeleteKeysRequest(key_id=key_id), timeout=30)
    assert not list(node.keys_dir.glob(f"{key_id}.*"))
    _still_serves(node, good, lr)


# ---- structure-aware fuzzing ---------------------------------------------------------------------------
def _fuzz(node, good, hostile, lr, seed: int, n: int) -> dict[str, int]:
    rng = random.Random(seed)
    ct = hostile.encrypt(lr.X_test[:1])[0]
    value, payload = read_value(ct)
    stub = node.stub(hostile.name)
    outcomes: dict[str, int] = {}
    for _ in range(n):
        try:
            if rng.random() < 0.5:
                bad = cw.fuzzed_value(value["rawInfo"], value["typeInfo"], payload, rng)
                stub.Predict(pb.PredictRequest(key_id=hostile.key_id, model=MODEL, ciphertexts=[bad]), timeout=60)
                name = "OK"
            else:
                resp = _upload(node, hostile, cw.fuzzed_keys(rng))
                stub.DeleteKeys(pb.DeleteKeysRequest(key_id=resp.key_id), timeout=30)
                name = "OK"
        except grpc.RpcError as exc:
            assert exc.code() in CLEAN and exc.details(), f"seed {seed}: {exc.code()}: {exc.details()}"
            name = exc.code().name
        outcomes[name] = outcomes.get(name, 0) + 1
        node.alive()
    _still_serves(node, good, lr)
    return outcomes


def test_structure_aware_fuzz_fixed_seed(target, lr):
    node, good, hostile = target
    outcomes = _fuzz(node, good, hostile, lr, seed=10, n=150 * SCALE)
    assert outcomes.get("INVALID_ARGUMENT", 0) > 100 * SCALE, outcomes


def test_structure_aware_fuzz_random_seed(target, lr):
    node, good, hostile = target
    seed = random.SystemRandom().randrange(1 << 32)
    print(f"fuzz seed {seed}")
    _fuzz(node, good, hostile, lr, seed=seed, n=40 * SCALE)
