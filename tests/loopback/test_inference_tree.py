"""Any Concrete ML bundle is served, not only linear ones: a depth-6 decision tree whose
evaluation keys (~77 MB) are far above gRPC's 4 MB message limit and must stream."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from fedfhe_common.procs import wait_until
from fedfhe_common.release import load_signing_key, load_verify_key
from fedfhe_common.schema import DIGITS
from fedfhe_inference.bundles import publish_bundle
from fedfhe_owner.inference_client import InferenceClient
from fedfhe_owner.predict import predict_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory, digits, pki):
    from concrete.ml.sklearn import DecisionTreeClassifier

    from fedfhe_coordinator.compile import compile_concrete_bundle

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
