"""A decrypted result decodes to the class Concrete ML's own ``predict`` gives, saturated rows included.

Concrete ML's softmax does not subtract the row's maximum: scores above ~710 overflow to inf and
their probabilities become nan, so the argmax of probabilities is the first overflowing class,
while Concrete ML's linear ``predict`` (argmax of the raw scores) is the largest. A few epochs of
SGDClassifier on unscaled digits pixels give scores in the tens of thousands: its saturated rows go
through the real deployment path (FHEModelDev, FHEModelClient keys and encryption, FHEModelServer,
decryption) in FHE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_owner.predict.decode import class_index, decides_on_raw_scores, decode, decrypt


@pytest.fixture(scope="module")
def saturated(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, np.ndarray]:
    """(compiled Concrete ML model, its deployment directory, rows whose probabilities tie on nan)."""
    import concrete.ml.sklearn as cml
    from concrete.ml.deployment import FHEModelDev
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier

    X, y = load_digits(return_X_y=True)
    clear = SGDClassifier(loss="log_loss", max_iter=5, tol=None, random_state=0).fit(X[:600], y[:600])
    model = cml.SGDClassifier.from_sklearn_model(clear, X[:200], n_bits=8)
    model.compile(X[:200])
    raw = model.decision_function(X[600:900])  # quantized, in the clear: what the circuit computes (no PBS)
    with np.errstate(over="ignore", invalid="ignore"):
        probs = model.predict_proba(X[600:900])
    tied = np.flatnonzero(np.argmax(probs, axis=1) != np.argmax(raw, axis=1))
    assert len(tied) >= 2, "the model must saturate some rows, or this test proves nothing"
    directory = tmp_path_factory.mktemp("saturated") / "bundle"
    FHEModelDev(str(directory), model).save()
    return model, directory, X[600:900][tied[:2]]


def test_a_saturated_row_decodes_to_concrete_mls_class_in_fhe(saturated):
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    model, directory, rows = saturated
    client = FHEModelClient(str(directory))
    client.generate_private_and_evaluation_keys()
    server = FHEModelServer(str(directory))
    server.load()
    keys = client.get_serialized_evaluation_keys()
    results = [decrypt(client, server.run(client.quantize_encrypt_serialize(rows[i:i + 1]), keys))
               for i in range(len(rows))]
    raw = np.vstack([r.raw for r in results])
    outputs = np.vstack([r.outputs for r in results])
    assert decides_on_raw_scores(client.model)
    predictions, probabilities = decode(raw, outputs, DIGITS, decides_on_raw_scores(client.model))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = model.predict(rows, fhe="simulate")
    np.testing.assert_array_equal(predictions, np.asarray(DIGITS.classes)[expected])
    assert not probabilities  # nan is not a probability: none are reported for these rows
    assert (np.argmax(outputs, axis=1) != expected).all()  # the old decode (argmax of probabilities) was wrong


def test_binary_linear_scores_threshold_at_zero_and_trees_use_probabilities():
    raw = np.array([[-0.5], [2.0], [0.0]])
    sigmoid = 1 / (1 + np.exp(-raw))
    outputs = np.hstack([1 - sigmoid, sigmoid])
    assert class_index(raw, outputs, on_raw=True).tolist() == [0, 1, 0]  # Concrete ML: scores > 0
    tree_raw = np.array([[0.2, 0.9, 0.1]])  # a tree's outputs: post-processing sums them, predict takes the argmax
    assert class_index(tree_raw, np.array([[0.1, 0.3, 0.6]]), on_raw=False).tolist() == [2]
