"""Any Concrete ML bundle is served, not only linear ones: a depth-6 decision tree whose
evaluation keys (~77 MB) are far above gRPC's 4 MB message limit and must stream."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.pki.release import load_signing_key, load_verify_key
from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.bundles import publish_bundle
from fedfhe_owner.predict.encrypted import predict_rows
from fedfhe_owner.predict.inference_client import InferenceClient

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, digits, pki):
    from concrete.ml.sklearn import DecisionTreeClassifier

    from fedfhe_coordinator.fhe.compile import compile_concrete_bundle

    model = DecisionTreeClassifier(max_depth=6, n_bits=6, random_state=0).fit(digits.X_train, digits.y_train)
    out = tmp_path_factory.mktemp("tree") / "bundle"
    bundle = compile_concrete_bundle(model, out, model_id="digits-tree", version="1", schema=DIGITS,
                                     signing_key=load_signing_key(pki / "release.key"),
                                     eval_set=(digits.X_test[:40], digits.y_test[:40]))
    return bundle, model


def test_tree_bundle_streams_77mb_keys_and_predicts(node, tree, digits, tmp_path, pki):
    bundle, model = tree
    assert bundle.meta["model_class"] == "DecisionTreeClassifier" and bundle.meta["n_bits"]["op_inputs"] == 6
    publish_bundle(bundle.directory, node.bundles_dir, load_verify_key(pki / "release.pub"))
    node.signal(signal.SIGHUP)  # served without a restart
    endpoint = node.endpoint("alice")
    with InferenceClient(endpoint) as client:
        wait_until(lambda: bool(client.list_models("digits-tree")), 60, "the tree bundle to be served")
    rows = digits.X_test[:1]
    result = predict_rows(endpoint, tmp_path / "alice", rows, model_id="digits-tree", progress=False)
    assert result.keys_uploaded
    assert result.bytes["evaluation_keys"] > 50 << 20  # streamed in 1 MiB chunks, far above 4 MB
    stored = node.keys_dir / f"{result.key_id}.evk"
    assert stored.stat().st_size == result.bytes["evaluation_keys"]
    np.testing.assert_array_equal(result.predictions, model.predict(rows, fhe="simulate"))
    np.testing.assert_allclose(result.scores, model.predict_proba(rows, fhe="simulate"), atol=1e-9)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, digits, pki):
    """Three depth-2 trees of one model: "1" and "2" fitted on other rows with the same n_bits (3),
    "3" with n_bits 4. Each compiles in about a second; their keys are 19-38 MB."""
    from concrete.ml.sklearn import DecisionTreeClassifier

    from fedfhe_coordinator.fhe.compile import compile_concrete_bundle

    half = len(digits.y_train) // 2
    out = {}
    for version, rows, n_bits in (("1", slice(0, half), 3), ("2", slice(half, None), 3), ("3", slice(0, half), 4)):
        model = DecisionTreeClassifier(max_depth=2, n_bits=n_bits, random_state=0)
        model.fit(digits.X_train[rows], digits.y_train[rows])
        bundle = compile_concrete_bundle(model, tmp_path_factory.mktemp("retrained") / version,
                                         model_id="digits-retrained", version=version, schema=DIGITS,
                                         signing_key=load_signing_key(pki / "release.key"))
        out[version] = (bundle, model)
    return out


def _publish(node, pki, bundle) -> None:
    publish_bundle(bundle.directory, node.bundles_dir, load_verify_key(pki / "release.pub"))
    node.signal(signal.SIGHUP)
    with InferenceClient(node.endpoint("alice")) as client:
        wait_until(lambda: any(m.version == bundle.version for m in client.list_models(bundle.model_id)), 60,
                   f"{bundle.model_id} {bundle.version} to be served")


# The node is the session's: another test's owner would bring its key sets (and max_keys_per_owner) along.
OWNER = "retrainer"


def _owner_keys(node) -> list:
    import json

    from fedfhe_inference.keystore import KeyRecord

    records = [KeyRecord.from_dict(json.loads(p.read_text())) for p in node.keys_dir.glob("*.json")]
    return [r for r in records if r.owner == OWNER and r.model_id == "digits-retrained"]


def test_a_retrained_tree_reuses_the_owners_keys_and_other_n_bits_does_not(node, retrained, digits, pki, tmp_path):
    import grpc

    from fedfhe_common.pki.ca import issue
    from fedfhe_owner.predict.encrypted import delete_keys
    from fedfhe_proto.inference.v1 import inference_pb2 as pb

    (b1, m1), (b2, m2), (b3, m3) = retrained["1"], retrained["2"], retrained["3"]
    assert b1.meta["key_params_sha256"] == b2.meta["key_params_sha256"] != b3.meta["key_params_sha256"]
    if not (pki / f"{OWNER}.crt").exists():
        issue(pki, OWNER, client=True)  # an owner of its own: the node accepts any owner the CA certified
    endpoint, state, rows = node.endpoint(OWNER), tmp_path / OWNER, digits.X_test[:2]

    _publish(node, pki, b1)
    first = predict_rows(endpoint, state, rows, model_id="digits-retrained", progress=False)
    assert (first.version, first.keys_uploaded, first.keys_reused_from) == ("1", True, "")
    assert first.bytes["uploaded_keys"] == first.bytes["evaluation_keys"] > 10 << 20
    np.testing.assert_array_equal(first.predictions, m1.predict(rows, fhe="simulate"))

    _publish(node, pki, b2)  # retrained, same hyper-parameters
    second = predict_rows(endpoint, state, rows, model_id="digits-retrained", progress=False)
    assert (second.version, second.keys_uploaded, second.bytes["uploaded_keys"]) == ("2", False, 0)
    assert (second.keys_reused_from, second.keys_attached_from, second.key_id) == ("1", "1", first.key_id)
    assert second.seconds["keygen"] == 0
    np.testing.assert_array_equal(second.predictions, m2.predict(rows, fhe="simulate"))
    assert [(r.key_id, r.versions) for r in _owner_keys(node)] == [(first.key_id, ("1", "2"))]  # one key set

    # Hostile or mistaken attaches: another owner's keys, an unknown id, a version of other key parameters.
    _publish(node, pki, b3)
    attach = lambda owner, key_id, version: node.stub(owner).AttachKeys(  # noqa: E731
        pb.AttachKeysRequest(key_id=key_id, model=pb.ModelRef(model_id="digits-retrained", version=version)),
        timeout=60)
    for owner, key_id, version, code, words in (
            ("bob", first.key_id, "2", grpc.StatusCode.PERMISSION_DENIED, "belong to another owner"),
            (OWNER, "f" * 32, "3", grpc.StatusCode.NOT_FOUND, "no evaluation keys with id"),
            (OWNER, first.key_id, "3", grpc.StatusCode.INVALID_ARGUMENT, "needs another")):
        with pytest.raises(grpc.RpcError) as err:
            attach(owner, key_id, version)
        assert (err.value.code(), words in err.value.details()) == (code, True), err.value.details()

    # Deleting version 1's keys detaches them from 1 only: version 2 keeps them, nothing is uploaded again.
    deleted = delete_keys(endpoint, state, "digits-retrained", "1")
    assert (deleted.key_id, deleted.versions_left) == (first.key_id, ("2",))
    again = predict_rows(endpoint, state, rows[:1], model_id="digits-retrained", version="2", progress=False)
    assert (again.keys_uploaded, again.key_id) == (False, first.key_id)

    third = predict_rows(endpoint, state, rows[:1], model_id="digits-retrained", progress=False)  # n_bits 4
    assert (third.version, third.keys_uploaded, third.keys_reused_from, third.keys_attached_from) == ("3", True, "", "")
    assert third.bytes["uploaded_keys"] > 10 << 20 and third.key_id != first.key_id
    np.testing.assert_array_equal(third.predictions, m3.predict(rows[:1], fhe="simulate"))
    assert sorted(r.versions for r in _owner_keys(node)) == [("2",), ("3",)]
