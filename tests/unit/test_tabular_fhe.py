"""A real table through FHE: per-column calibration keeps simulated FHE at clear accuracy, and the
preprocessing travels signed with the model, so an owner transforms rows exactly as it was trained.

Wine's columns live on very different scales (hue 0.5-1.7, proline 280-1700): one
calibration range for every column lost 14.8 points in FHE. Two compiles (a few seconds
each): the steps one by one, and ``compile_artifact`` writing a real signed bundle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.model_selection import train_test_split

from fedfhe_common.contracts import bundle
from fedfhe_common.contracts.manifest import MANIFEST, canonical_body
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.pki import release
from fedfhe_common.runtime.errors import FedfheError, IntegrityError
from fedfhe_coordinator.fhe.compile import compile_artifact, evaluate
from fedfhe_coordinator.fhe.concrete_model import calibration_set, to_concrete
from fedfhe_coordinator.fhe.local_training import train_local
from fedfhe_owner.predict.encrypted import check_own_schema
from fedfhe_testbed.tabular import labels_of, load_tabular, tabular_schema, write_csv

TOLERANCE = 0.005  # half a point of accuracy


@dataclasses.dataclass
class Wine:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    schema: DatasetSchema
    artifact: Any


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Wine:
    """70/30 stratified split of the wine table, written and loaded as owners do, trained locally."""
    header, rows, schema = load_tabular("wine")
    y = labels_of(header, rows, schema)
    train, test = train_test_split(np.arange(len(rows)), test_size=0.3, stratify=y, random_state=0)
    d = tmp_path_factory.mktemp("wine")
    write_csv(d / "train.csv", header, [rows[i] for i in train])
    write_csv(d / "test.csv", header, [rows[i] for i in test], order=list(range(len(header)))[::-1])
    X_train, y_train = load_table(d / "train.csv", schema)
    X_test, y_test = load_table(d / "test.csv", schema)
    artifact = train_local(X_train, y_train, schema, "LogisticRegression", eval_set=(X_test, y_test))
    return Wine(X_train, y_train, X_test, y_test, schema, artifact)


def test_wine_simulated_fhe_is_within_half_a_point_of_clear(wine):
    prep = wine.artifact.prep
    assert prep.to_dict() == Preprocessing.local(wine.schema, wine.X_train).to_dict()  # the training rows' own
    estimator = wine.artifact.to_estimator()
    calibration = calibration_set(wine.schema, estimator, prep=prep)
    # per column: every input spans its own declared bounds after the transform
    lo, hi = prep.calibration_bounds()
    np.testing.assert_allclose(calibration.min(axis=0), lo)
    np.testing.assert_allclose(calibration.max(axis=0), hi)
    fhe = to_concrete(estimator, "LogisticRegression", calibration, n_bits=8)
    scores = evaluate(estimator, fhe, prep.transform(wine.X_test), wine.y_test, wine.schema)
    assert scores["eval_rows"] == len(wine.y_test) == 54
    assert scores["clear_accuracy"] >= 0.9, scores  # a real model, not two equally bad ones
    assert abs(scores["fhe_simulated_accuracy"] - scores["clear_accuracy"]) <= TOLERANCE, scores


def test_compiled_bundle_signs_the_preprocessing_and_refuses_one_that_does_not_fit(wine, tmp_path):
    key = Ed25519PrivateKey.generate()
    wine.artifact.save(tmp_path / "artifact", key)
    result, _ = compile_artifact(tmp_path / "artifact", tmp_path / "bundle", signing_key=key, n_bits=8,
                                 model_id="wine-lr", version="1", eval_set=(wine.X_test, wine.y_test))
    meta = bundle.read(result.directory, key.public_key())
    assert bundle.preprocessing_of(meta).to_dict() == wine.artifact.prep.to_dict()
    metrics = meta["metrics"]
    assert abs(metrics["fhe_simulated_accuracy"] - metrics["clear_accuracy"]) <= TOLERANCE, metrics

    raw = (result.directory / MANIFEST).read_bytes()
    assert bundle.verify_signed_manifest(raw, release.sign(key, raw), key.public_key(), "bundle") == meta
    fewer = dict(meta["preprocessing"])
    for k in ("inputs", "center", "scale", "fill"):
        fewer[k] = fewer[k][:-1]  # a consistent preprocessing of 12 inputs, for a schema with 13
    for bad, needle in ((fewer, "inputs differ from the schema's columns"),
                        (None, "missing, and schema 'wine' is typed")):
        body = {**meta, "preprocessing": bad}
        if bad is None:
            body.pop("preprocessing")
        tampered = canonical_body(body)
        with pytest.raises(IntegrityError) as exc:  # correctly signed, still refused
            bundle.verify_signed_manifest(tampered, release.sign(key, tampered), key.public_key(), "bundle")
        assert needle in str(exc.value) and "manifest: preprocessing" in str(exc.value)


def _meta(schema: DatasetSchema, preprocessing: object) -> dict[str, Any]:
    return {"model_id": "m", "version": "1", "files": {"client.zip": "0" * 64, "server.zip": "0" * 64},
            "schema": schema.to_dict(), "preprocessing": preprocessing}


def test_check_meta_refuses_a_preprocessing_whose_inputs_differ_from_its_typed_schema(wine):
    penguins = tabular_schema("penguins")
    good = Preprocessing.from_moments(penguins, np.full(3 * penguins.n_features, 0.5)).to_dict()
    assert bundle.check_meta(_meta(penguins, good), "m")["preprocessing"] == good
    fewer = dataclasses.replace(penguins, columns=penguins.columns[:-1], n_features=0)  # without year
    other = Preprocessing.from_moments(fewer, np.full(3 * fewer.n_features, 0.5)).to_dict()
    wine_prep = wine.artifact.prep.to_dict()
    short = {**good, "scale": good["scale"][:-1]}
    for bad, needle in ((other, "inputs differ"), (wine_prep, "inputs differ"), (short, "need 10 entries each"),
                        (None, "missing")):
        with pytest.raises(IntegrityError) as exc:
            bundle.check_meta(_meta(penguins, bad), "some/bundle")
        assert str(exc.value).startswith("some/bundle: manifest: preprocessing: ") and needle in str(exc.value)


def test_an_owner_whose_schema_differs_from_the_models_is_refused_naming_the_keys():
    signed = tabular_schema("penguins")
    check_own_schema(signed, DatasetSchema.from_mapping(signed.to_dict()), "penguins-lr")  # the same: accepted
    cols = [dataclasses.replace(c, max=8000.0) if c.name == "body_mass_g" else c for c in signed.columns]
    own = dataclasses.replace(signed, name="my-penguins", columns=cols)
    with pytest.raises(FedfheError) as exc:
        check_own_schema(own, signed, "penguins-lr")
    text = str(exc.value)
    assert "model penguins-lr was trained on schema 'penguins'" in text and "'my-penguins'" in text
    assert " in columns, name;" in text, text
    reordered = dataclasses.replace(signed, columns=[*signed.columns[1:], signed.columns[0]])
    with pytest.raises(FedfheError, match=r"differs from this owner's schema 'penguins' in columns;"):
        check_own_schema(reordered, signed, "penguins-lr")


def test_wine_test_rows_in_reversed_column_order_load_like_the_original(wine, tmp_path):
    header, rows, schema = load_tabular("wine")
    write_csv(tmp_path / "all.csv", header, rows)
    X, _ = load_table(tmp_path / "all.csv", schema)
    assert X.shape == (len(rows), 13) and not np.isnan(X).any()
    # the fixture's test file was written reversed: its rows are rows of the table as it is
    assert {tuple(r) for r in wine.X_test} <= {tuple(r) for r in X}
