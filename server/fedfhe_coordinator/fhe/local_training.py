"""The local path: train a supported family on one local file and write the same training artifact.

For a single site (or a quick start) without a federation: the artifact it
writes is what ``compile`` reads, with ``origin="local"``. Tree families
(decision trees, random forests, XGBoost) train only here: FedAvg has no tree
parameters to average. Their artifact holds node arrays or XGBoost's JSON
(``fedfhe_common.contracts.tree_artifact``), never a pickle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfhe_common.contracts import tree_artifact
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.ml.scoring import score_model
from fedfhe_common.runtime.errors import ConfigError

DEFAULT_EPOCHS = 10


def train_local(
    X: np.ndarray,
    y: np.ndarray,
    schema: DatasetSchema,
    family: str,
    *,
    model_params: dict[str, Any] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    source: str = "",
) -> TrainingArtifact:
    """Fit from the same zero start the federation uses, ``epochs`` times (each a warm-started local fit).

    A tree family is fitted once (``epochs`` does not apply to it). ``X`` are loaded rows;
    a typed schema's preprocessing takes its statistics from them (this one site is the
    whole federation) and travels in the artifact.
    """
    models.check_family(family, schema, local=True)
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    params = dict(model_params or {})
    prep = Preprocessing.local(schema, X)
    X = prep.transform(X, source or "training rows")
    if eval_set is not None:
        eval_set = (prep.transform(eval_set[0], "evaluation rows"), eval_set[1])
    if models.is_tree(family):
        artifact = _train_tree(X, y, schema, family, params, eval_set, source)
        artifact.preprocessing = prep
        return artifact
    model = models.set_parameters(models.build(family, params), models.initial_parameters(family, schema), schema)
    started = time.perf_counter()
    for _ in range(epochs):
        models.local_fit(model, family, X, y, schema)
    seconds = time.perf_counter() - started
    coef, intercept = models.get_parameters(model, family, schema)
    metrics: dict[str, Any] = {
        "rounds": 0,
        "epochs": epochs,
        "rows": len(y),
        "seconds": seconds,
        "source": source,
        "train": score_model(model, schema, X, y),
    }
    if eval_set is not None:
        metrics["eval"] = score_model(model, schema, *eval_set)
    return TrainingArtifact(family, schema, coef, intercept, params, metrics, origin="local", preprocessing=prep)


def train_local_file(
    data: Path,
    schema: DatasetSchema,
    family: str,
    out_dir: Path,
    *,
    labels: Path | None = None,
    model_params: dict[str, Any] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> TrainingArtifact:
    """Load a CSV/NPZ/IDX file (checked against the schema), train, save the (signed) artifact to ``out_dir``."""
    X, y = load_table(data, schema, labels)
    artifact = train_local(
        X, y, schema, family, model_params=model_params, epochs=epochs, eval_set=eval_set, source=str(data)
    )
    artifact.save(out_dir, signing_key)
    return artifact


def _train_tree(X: np.ndarray, y: np.ndarray, schema: DatasetSchema, family: str, params: dict[str, Any],
                eval_set: tuple[np.ndarray, np.ndarray] | None, source: str) -> TrainingArtifact:
    """One fit of a tree family; its artifact holds the checked node arrays (or XGBoost JSON)."""
    if schema.is_classifier:
        # The inference client reads score column i as the schema's class i, so a tree must know every class.
        missing = sorted(set(schema.label_codes) - {int(v) for v in np.unique(y)})
        if missing:
            raise ConfigError(f"model {family}: the training rows lack classes {missing} of schema {schema.name!r}; "
                              "a tree family must see every class")
        if family == "XGBClassifier" and list(schema.label_codes) != list(range(len(schema.classes))):
            raise ConfigError(f"model XGBClassifier needs classes 0..{len(schema.classes) - 1}; schema "
                              f"{schema.name!r} has {schema.classes}")
    model = models.build(family, params)
    started = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - started
    tree = tree_artifact.from_estimator(model, family, schema)
    metrics: dict[str, Any] = {
        "rounds": 0,
        "epochs": 1,
        "rows": len(y),
        "seconds": seconds,
        "source": source,
        "tree": tree_artifact.describe(tree),
        "train": score_model(model, schema, X, y),
    }
    if eval_set is not None:
        metrics["eval"] = score_model(model, schema, *eval_set)
    empty = np.zeros(0)
    return TrainingArtifact(family, schema, empty, empty, params, metrics, origin="local", tree=tree)
