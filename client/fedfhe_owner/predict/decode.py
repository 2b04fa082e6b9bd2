"""Decrypted results to predictions, decided exactly as Concrete ML's own ``predict`` decides them.

Concrete ML 1.9.0 decides a linear classifier's class on the raw scores (``decision_function``:
argmax, or > 0 for a single column, as scikit-learn does) and every other classifier's on the
post-processed probabilities (``BaseClassifier.predict``). Its softmax does not subtract the
row's maximum, so a saturated row (an SGDClassifier's scores above ~710) turns into inf/inf = nan
for several classes: the argmax of those probabilities is the first of them, not the largest
score. Deciding on the raw scores keeps the owner's decrypted class equal to Concrete ML's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema


@dataclass(frozen=True)
class Decrypted:
    """One result: the de-quantized circuit output (``raw``) and what post-processing makes of it."""

    raw: np.ndarray  # 1 x k: scores before sigmoid/softmax (a tree: per-tree outputs before their sum)
    outputs: np.ndarray  # 1 x outputs: probabilities for a classifier, values for a regressor


def decrypt(fhe: Any, data: bytes) -> Decrypted:
    """``FHEModelClient.deserialize_decrypt_dequantize`` in its two steps, keeping the step in between."""
    quantized = fhe.deserialize_decrypt(data)
    raw = np.asarray(fhe.model.dequantize_output(quantized), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # a saturated row's softmax: inf/inf, as in Concrete ML
        outputs = np.asarray(fhe.model.post_processing(raw.copy()))  # a copy: post-processing may work in place
    return Decrypted(raw.reshape(1, -1), outputs.reshape(1, -1))


def decides_on_raw_scores(model: Any) -> bool:
    """Whether Concrete ML's ``predict`` for this model takes the class from raw scores (its linear classifiers)."""
    from concrete.ml.sklearn.base import SklearnLinearClassifierMixin  # lazy: concrete-ml takes seconds to import

    return isinstance(model, SklearnLinearClassifierMixin)


def class_index(raw: np.ndarray, outputs: np.ndarray, on_raw: bool) -> np.ndarray:
    """Index into the classes per row: Concrete ML's linear ``predict`` on ``raw``, ``BaseClassifier.predict``
    on ``outputs`` otherwise (rows x k arrays)."""
    if on_raw:
        return (raw[:, 0] > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
    if outputs.shape[1] == 1:  # not a Concrete ML classifier's output; kept as before: a probability of class 1
        return (outputs[:, 0] > 0.5).astype(int)
    return np.argmax(outputs, axis=1)


def decode(raw: np.ndarray, outputs: np.ndarray, schema: DatasetSchema, on_raw: bool) -> tuple[np.ndarray, bool]:
    """(predictions, whether ``outputs`` are class probabilities) for the rows of ``raw`` and ``outputs``."""
    if not schema.is_classifier:
        return outputs[:, 0], False
    classes = np.asarray(schema.classes)
    probs = bool(outputs.shape[1] > 1 and (outputs >= -1e-6).all()
                 and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))
    return classes[class_index(raw, outputs, on_raw)], probs
