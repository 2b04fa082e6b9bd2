"""Typed schemas and the federation's preprocessing: what a schema refuses, what still loads, and the statistics.

The schema is shared configuration, so each mistake an operator can make in it is
refused with a message naming the column and the fix. The preprocessing is built
from statistics that travel as row-weighted sums: pooled over owners they must give
exactly what one site holding all the rows would compute, and anything that arrives
from another host (a statistics reply, a manifest's preprocessing) is checked first.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DIGITS, ColumnSpec, DatasetSchema, resolve_schema
from fedfhe_common.ml.data import load_table, save_csv
from fedfhe_common.ml.preprocessing import Preprocessing, check_moments, moments
from fedfhe_common.runtime.errors import ConfigError, IntegrityError
from fedfhe_testbed.tabular import TABULAR, load_tabular, write_csv

CLASSES = ["a", "b"]


def typed(columns: list[dict], **over: object) -> DatasetSchema:
    return DatasetSchema.from_mapping({"name": "t", "classes": CLASSES, "columns": columns, **over})


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, DatasetSchema]:
    """The whole penguins table loaded the way an owner loads it (gaps as NaN, string labels as codes)."""
    header, rows, schema = load_tabular("penguins")
    path = tmp_path_factory.mktemp("penguins") / "penguins.csv"
    write_csv(path, header, rows)
    X, y = load_table(path, schema)
    return X, y, schema


# ---- the schema refuses its own mistakes -------------------------------------------------------------------

@pytest.mark.parametrize(("columns", "over", "needle"), [
    ([{"name": "c", "kind": "categorical"}], {}, "column 'c': a categorical column needs at least 2 categories"),
    ([{"name": "c", "kind": "categorical", "categories": ["x"]}], {}, "needs at least 2 categories"),
    ([{"name": "x", "min": 5, "max": 5}], {}, "column 'x': min must be below max"),
    ([{"name": "x", "min": 6, "max": 5}], {}, "column 'x': min must be below max"),
    ([{"name": "x", "kind": "integer", "min": 0}], {}, "column 'x': a integer column needs declared min and max"),
    ([{"name": "c", "kind": "categorical", "categories": ["x", "y"], "missing": "mean"}], {},
     "column 'c': missing: mean is for numeric columns; use mode or value"),
    ([{"name": "x", "min": 0, "max": 10, "missing": "value", "fill": 100}], {},
     "column 'x': fill 100 lies outside [0.0, 10.0]"),
    ([{"name": "c", "kind": "categorical", "categories": ["x", "y"], "missing": "value", "fill": "z"}], {},
     "column 'c': fill 'z' is not one of the categories"),
    ([{"name": "x", "min": 0, "max": 1}, {"name": "x", "min": 0, "max": 2}], {}, "columns declared twice: x"),
    ([{"name": "label", "min": 0, "max": 1}], {}, "the label column 'label' is also a feature column"),
    ([{"name": "y", "min": 0, "max": 1}], {"label_column": "y"}, "the label column 'y' is also a feature column"),
])
def test_schema_mistakes_are_refused_naming_the_column(columns, over, needle):
    with pytest.raises(ConfigError) as exc:
        typed(columns, **over)
    assert needle in str(exc.value)


@pytest.mark.parametrize(("body", "needle"), [
    pytest.param("classes: [a, b]\ncolumns:\n- name: smoker\n  kind: categorical\n  categories: [yes, no]\n",
                 "column 'smoker': categories[0]: True is a YAML boolean; quote it", id="categories"),
    pytest.param("classes: [yes, no]\ncolumns:\n- name: x\n  min: 0\n  max: 1\n",
                 "is a YAML boolean; quote it", id="classes"),
])
def test_yaml_booleans_as_categories_or_classes_are_refused_with_advice_to_quote(tmp_path, body, needle):
    path = tmp_path / "schema.yaml"
    path.write_text("name: t\n" + body)
    with pytest.raises(ConfigError) as exc:
        DatasetSchema.load(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)
    quoted = body.replace("[yes, no]", '["yes", "no"]')
    path.write_text("name: t\n" + quoted)
    assert DatasetSchema.load(path).typed  # quoted, the same words are fine


# ---- what still loads, and what round-trips ------------------------------------------------------------

def test_legacy_schemas_still_load_and_read_their_tables(tmp_path):
    assert resolve_schema("digits") is DIGITS and not DIGITS.typed and DIGITS.n_features == 64
    lo, hi = DIGITS.input_bounds()
    assert (lo == 0).all() and (hi == 16).all() and DIGITS.feature_names()[:2] == ["f0", "f1"]
    (tmp_path / "legacy.yaml").write_text("name: tiny\nn_features: 3\nfeature_min: 0\nfeature_max: 16\n"
                                          "classes: [0, 1]\n")
    legacy = resolve_schema(str(tmp_path / "legacy.yaml"))
    assert not legacy.typed and legacy.n_features == 3 and legacy.label_codes == [0, 1]
    X = np.array([[0.0, 1.0, 16.0], [3.0, 4.0, 5.0]])
    save_csv(tmp_path / "rows.csv", X, np.array([0, 1]), legacy)
    X2, y2 = load_table(tmp_path / "rows.csv", legacy)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, [0, 1])
    identity = Preprocessing.from_dict(legacy, None)  # a legacy manifest carries no preprocessing
    np.testing.assert_array_equal(identity.transform(X), X)


def test_a_typed_schema_round_trips_and_computes_its_input_width(penguins, tmp_path):
    _, _, schema = penguins
    # island (3) + 4 numbers + sex (2) + year: one input per number, one per category
    assert schema.n_features == 10
    assert schema.feature_names()[:4] == ["island=Biscoe", "island=Dream", "island=Torgersen", "bill_length_mm"]
    data = schema.to_dict()
    assert data["n_features"] == 10
    assert DatasetSchema.from_mapping(data) == schema
    assert DatasetSchema.from_mapping(json.loads(schema.to_json())) == schema
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert DatasetSchema.load(tmp_path / "s.yaml") == schema
    data.pop("n_features")  # as a person writes it: computed
    assert DatasetSchema.from_mapping(data).n_features == 10
    with pytest.raises(ConfigError, match="n_features 9 differs from the 10 model inputs"):
        DatasetSchema.from_mapping({**data, "n_features": 9})


def test_string_classes_become_codes_and_decode_back():
    schema = typed([{"name": "x", "min": 0, "max": 1}], classes=["Adelie", "Chinstrap", "Gentoo"])
    assert schema.label_codes == [0, 1, 2]
    decoded = schema.decode_labels(np.array([2, 0, 1, 1]))
    assert list(decoded) == ["Gentoo", "Adelie", "Chinstrap", "Chinstrap"]
    integers = typed([{"name": "x", "min": 0, "max": 1}], classes=[3, 5, 7])
    assert integers.label_codes == [3, 5, 7]
    np.testing.assert_array_equal(integers.decode_labels(np.array([7, 3])), [7, 3])


def test_schema_digest_depends_on_the_column_order():
    a = typed([{"name": "x", "min": 0, "max": 1}, {"name": "z", "min": 0, "max": 2}])
    b = typed([{"name": "z", "min": 0, "max": 2}, {"name": "x", "min": 0, "max": 1}])
    assert fc.schema_sha256(a) == fc.schema_sha256(DatasetSchema.from_mapping(a.to_dict()))
    assert fc.schema_sha256(a) != fc.schema_sha256(b)  # the column order is the encoding


# ---- the federation's statistics -------------------------------------------------------------------

def test_two_owners_moments_weighted_by_rows_equal_one_site_holding_every_row(penguins):
    X, _, schema = penguins
    assert np.isnan(X).any()  # the table has gaps: the present fractions matter
    a, b = X[:100], X[100:]
    pooled = (len(a) * moments(a, schema) + len(b) * moments(b, schema)) / len(X)
    fed = Preprocessing.from_moments(schema, pooled)
    one = Preprocessing.local(schema, X)
    np.testing.assert_allclose(fed.center, one.center, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fed.scale, one.scale, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fed.fill, one.fill, rtol=0, atol=1e-9, equal_nan=True)
    # and they are the statistics themselves: mean and (population) std over the present values
    names = schema.feature_names()
    for name in ("bill_length_mm", "body_mass_g"):
        i = names.index(name)
        assert one.center[i] == pytest.approx(np.nanmean(X[:, i]), abs=1e-9)
        assert one.scale[i] == pytest.approx(np.nanstd(X[:, i]), abs=1e-9)
        assert one.fill[i] == pytest.approx(np.nanmean(X[:, i]), abs=1e-9)  # missing: mean
    sex = [names.index("sex=female"), names.index("sex=male")]
    counts = np.nansum(X[:, sex], axis=0)
    np.testing.assert_array_equal(one.fill[sex], np.eye(2)[int(np.argmax(counts))])  # missing: mode
    assert np.isnan(one.fill[names.index("year")])  # missing: refuse
    moments_vector = moments(X, schema)
    assert moments_vector.shape == (30,) and moments_vector.min() >= 0 and moments_vector.max() <= 1


@pytest.mark.parametrize("bad", [
    pytest.param(lambda v: v[:-1], id="short"),
    pytest.param(lambda v: np.concatenate([v, [0.5]]), id="long"),
    pytest.param(lambda v: v.reshape(3, -1), id="2-d"),
    pytest.param(lambda v: np.where(np.arange(len(v)) == 4, np.nan, v), id="nan"),
    pytest.param(lambda v: np.where(np.arange(len(v)) == 4, np.inf, v), id="inf"),
    pytest.param(lambda v: np.where(np.arange(len(v)) == 4, 1.5, v), id="above-1"),
    pytest.param(lambda v: np.where(np.arange(len(v)) == 4, -0.5, v), id="below-0"),
    pytest.param(lambda v: v.astype(str), id="strings"),
])
def test_check_moments_refuses_a_malformed_statistics_vector(penguins, bad):
    X, _, schema = penguins
    good = moments(X, schema)
    np.testing.assert_allclose(check_moments(good, schema), good)
    with pytest.raises(ValueError):
        check_moments(bad(good), schema)


def test_preprocessing_round_trips_through_its_dict(penguins):
    X, _, schema = penguins
    prep = Preprocessing.local(schema, X)
    back = Preprocessing.from_dict(schema, json.loads(json.dumps(prep.to_dict())))
    np.testing.assert_array_equal(back.center, prep.center)
    np.testing.assert_array_equal(back.scale, prep.scale)
    np.testing.assert_array_equal(back.fill, prep.fill)
    assert back.fingerprint() == prep.fingerprint()
    np.testing.assert_array_equal(back.transform(X), prep.transform(X))


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: {**d, "inputs": d["inputs"][:-1]}, "inputs differ from the schema's columns"),
    (lambda d: {**d, "inputs": list(reversed(d["inputs"]))}, "inputs differ from the schema's columns"),
    (lambda d: {**d, "scale": [0.0, *d["scale"][1:]]}, "scale finite and positive"),
    (lambda d: {**d, "scale": [-1.0, *d["scale"][1:]]}, "scale finite and positive"),
    (lambda d: {**d, "center": d["center"][:-1]}, "need 10 entries each"),
    (lambda d: {**d, "format": 99}, "not a format-1 preprocessing"),
    (lambda d: None, "missing, and schema 'penguins' is typed"),
])
def test_from_dict_refuses_a_preprocessing_that_does_not_fit_the_schema(penguins, edit, needle):
    X, _, schema = penguins
    data = edit(Preprocessing.local(schema, X).to_dict())
    with pytest.raises(IntegrityError) as exc:
        Preprocessing.from_dict(schema, data, "manifest: preprocessing")
    assert needle in str(exc.value) and "manifest: preprocessing" in str(exc.value)


# ---- a statistics reply from an owner --------------------------------------------------------------

def _reply(vector: np.ndarray, rows: object = 50, **extra_records: object) -> RecordDict:
    return RecordDict({fc.METRICS: MetricRecord({fc.NUM_EXAMPLES: rows}), fc.ARRAYS: ArrayRecord([vector]),
                       **extra_records})


def test_a_good_statistics_reply_passes(penguins):
    X, _, schema = penguins
    vector, rows = fc.check_statistics_reply(_reply(moments(X[:50], schema)), schema, cap=1000)
    np.testing.assert_allclose(vector, moments(X[:50], schema))
    assert rows == 50


@pytest.mark.parametrize(("make", "needle"), [
    (lambda v: _reply(v, owner=ConfigRecord({"name": "alice"})), "holds exactly 'metrics' and 'arrays'"),
    (lambda v: _reply(v[:-1]), "statistics must be 30 numbers"),
    (lambda v: _reply(np.concatenate([v, v])), "statistics must be 30 numbers"),
    (lambda v: _reply(v, rows=5000), "num-examples is 5000, above this owner's cap of 1000"),
    (lambda v: _reply(v, rows=0), "num-examples must be positive"),
    (lambda v: _reply(np.full_like(v, 2.0)), "finite fractions in [0, 1]"),
    (lambda v: RecordDict({fc.METRICS: MetricRecord({fc.NUM_EXAMPLES: 50, "extra": 1.0}),
                           fc.ARRAYS: ArrayRecord([v])}), "metrics are exactly 'num-examples'"),
    (lambda v: RecordDict({fc.METRICS: MetricRecord({fc.NUM_EXAMPLES: 50}), fc.ARRAYS: ArrayRecord([v, v])}),
     "carries one array, got 2"),
])
def test_a_statistics_reply_that_breaks_the_contract_is_refused(penguins, make, needle):
    X, _, schema = penguins
    with pytest.raises(fc.ReplyRejected) as exc:
        fc.check_statistics_reply(make(moments(X[:50], schema)), schema, cap=1000)
    assert needle in str(exc.value)


def test_column_spec_is_checked_when_replaced():
    """dataclasses.replace re-runs the checks: a spec cannot be edited into an invalid one."""
    col = ColumnSpec("x", min=0, max=10)
    assert dataclasses.replace(col, missing="value", fill=5).fill == 5.0
    with pytest.raises(ConfigError, match="missing: value needs a fill value"):
        dataclasses.replace(col, missing="value")


@pytest.mark.parametrize("name", TABULAR)
def test_the_demo_tables_load_against_their_reviewed_schemas(tmp_path, name):
    header, rows, schema = load_tabular(name)
    assert schema.typed and schema.n_features == len(schema.feature_names())
    write_csv(tmp_path / "t.csv", header, rows)
    X, y = load_table(tmp_path / "t.csv", schema)
    assert X.shape == (len(rows), schema.n_features)
    if schema.is_classifier:
        assert sorted(set(y.tolist())) == schema.label_codes
    else:  # a regression target inside its declared bounds
        assert schema.target_min <= y.min() and y.max() <= schema.target_max
