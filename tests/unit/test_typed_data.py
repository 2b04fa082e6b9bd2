"""An owner's real table against a typed schema: every bad cell refused before training, named precisely.

The rows come from the penguins table (categories, gaps written NA, string labels),
written the way an owner holds them; each test breaks one thing and checks that the
refusal names the line, the column, the value and the rule, and that no training
artifact appears. Then what must work: any column order, gaps filled by the schema's
rule, ``check-data`` listing every problem, Parquet, and ``draft-schema``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.data import load_table, read_typed
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.runtime.errors import DataError
from fedfhe_coordinator.fhe.local_training import train_local_file
from fedfhe_owner import cli as owner_cli
from fedfhe_testbed.tabular import load_tabular, write_csv

BROKEN_ROW = 5  # index into the rows; its CSV line is BROKEN_ROW + 2 (the header is line 1)


@dataclasses.dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    schema: DatasetSchema

    def copy_rows(self) -> list[list[str]]:
        return [list(r) for r in self.rows]

    def write(self, path: Path, rows: list[list[str]] | None = None, header: list[str] | None = None,
              order: list[int] | None = None) -> Path:
        write_csv(path, header or self.header, self.rows if rows is None else rows, order)
        return path

    def at(self, column: str) -> int:
        return self.header.index(column)


@pytest.fixture(scope="module")
def table() -> Table:
    """Every 8th penguin (all three species and islands, some gaps): a small owner's file."""
    header, rows, schema = load_tabular("penguins")
    subset = [list(r) for r in rows[::8]]
    assert {r[header.index("species")] for r in subset} == {"Adelie", "Chinstrap", "Gentoo"}
    assert all(c != "NA" for c in subset[BROKEN_ROW])
    return Table(header, subset, schema)


def _refused_before_training(path: Path, schema: DatasetSchema, out: Path) -> DataError:
    with pytest.raises(DataError) as exc:
        train_local_file(path, schema, "LogisticRegression", out)
    assert not out.exists(), "a refused file must not produce a training artifact"
    return exc.value


# ---- each kind of bad cell, refused before training -------------------------------------------------

@pytest.mark.parametrize(("column", "value", "rule"), [
    ("island", "Atlantis", "is not one of the categories ['Biscoe', 'Dream', 'Torgersen']"),
    ("bill_length_mm", "99.5", "lies outside the declared bounds [30, 60]"),
    ("body_mass_g", "1500", "lies outside the declared bounds [2000, 7000]"),
    ("flipper_length_mm", "190.5", "is not an integer"),
    ("bill_depth_mm", "deep", "is not a number"),
    ("year", "NA", "is missing, and the schema refuses gaps here (missing: refuse)"),
    ("island", "", "is missing, and the schema refuses gaps here (missing: refuse)"),
    ("species", "Emperor", "is not one of the schema's classes ['Adelie', 'Chinstrap', 'Gentoo']"),
    ("species", "NA", "is missing: every training row needs a label"),
])
def test_a_bad_cell_is_refused_naming_line_column_value_and_rule(table, tmp_path, column, value, rule):
    rows = table.copy_rows()
    rows[BROKEN_ROW][table.at(column)] = value
    path = table.write(tmp_path / "owner.csv", rows)
    err = _refused_before_training(path, table.schema, tmp_path / "artifact")
    text = str(err)
    assert str(path) in text
    assert f"line {BROKEN_ROW + 2}, column {column!r}: {value!r} {rule}" in text, text
    assert "1 cell(s) break the schema" in text


def _drop(t: Table, column: str) -> tuple[list[str], list[list[str]]]:
    i = t.at(column)
    return [h for j, h in enumerate(t.header) if j != i], [[c for j, c in enumerate(r) if j != i] for r in t.rows]


def _append(t: Table, name: str, cells: list[str]) -> tuple[list[str], list[list[str]]]:
    return [*t.header, name], [[*r, c] for r, c in zip(t.rows, cells, strict=True)]


@pytest.mark.parametrize(("make", "needle"), [
    (lambda t: _drop(t, "year"), "header lacks column(s) the schema 'penguins' declares: 'year'"),
    (lambda t: _drop(t, "species"), "header lacks column(s) the schema 'penguins' declares: 'species'"),
    (lambda t: _append(t, "island", [r[t.at("island")] for r in t.rows]), "header names column(s) twice: 'island'"),
    (lambda t: _append(t, "ring_id", [f"R{i}" for i in range(len(t.rows))]),
     "header has column(s) the schema 'penguins' does not declare: 'ring_id'"),
])
def test_a_header_that_does_not_match_the_schema_is_refused_at_line_1(table, tmp_path, make, needle):
    header, rows = make(table)
    path = table.write(tmp_path / "owner.csv", rows, header)
    err = _refused_before_training(path, table.schema, tmp_path / "artifact")
    assert err.line == 1 and needle in str(err), str(err)


def test_an_undeclared_column_listed_in_ignore_columns_is_accepted(table, tmp_path):
    header, rows = _append(table, "ring_id", [f"R{i}" for i in range(len(table.rows))])
    schema = dataclasses.replace(table.schema, ignore_columns=["ring_id"])
    X, _ = load_table(table.write(tmp_path / "owner.csv", rows, header), schema)
    X0, _ = load_table(table.write(tmp_path / "plain.csv"), table.schema)
    np.testing.assert_array_equal(X, X0)


# ---- what must load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_columns_in_another_order_load_to_the_same_rows(table, tmp_path, order):
    X0, y0 = load_table(table.write(tmp_path / "a.csv"), table.schema)
    n = len(table.header)
    perm = list(range(n))[::-1] if order == "reversed" else [int(i) for i in np.random.default_rng(1).permutation(n)]
    assert perm != list(range(n))
    X1, y1 = load_table(table.write(tmp_path / "b.csv", order=perm), table.schema)
    np.testing.assert_array_equal(X1, X0)
    np.testing.assert_array_equal(y1, y0)
    assert np.isnan(X0).any()  # the subset's own gaps survive in place


def test_gaps_load_as_nan_and_the_schema_rule_fills_them(table, tmp_path):
    """missing: mean (bill length), mode (sex) and value (body mass, declared here) after the transform."""
    cols = [dataclasses.replace(c, missing="value", fill=4000) if c.name == "body_mass_g" else c
            for c in table.schema.columns]
    schema = dataclasses.replace(table.schema, columns=cols)
    rows = table.copy_rows()
    gaps = {2: "bill_length_mm", 3: "sex", 4: "body_mass_g"}
    for r, column in gaps.items():
        rows[r][table.at(column)] = "NA"
    X, _ = load_table(table.write(tmp_path / "gaps.csv", rows), schema)
    names = schema.feature_names()
    idx = {"bill_length_mm": [names.index("bill_length_mm")], "sex": [names.index("sex=female"),
           names.index("sex=male")], "body_mass_g": [names.index("body_mass_g")]}
    for r, column in gaps.items():
        assert np.isnan(X[r, idx[column]]).all()
        assert not np.isnan(np.delete(X[r], idx[column])).any()  # only that cell is a gap
    prep = Preprocessing.local(schema, X)
    Z = prep.transform(X)
    assert not np.isnan(Z).any()
    sex_counts = np.nansum(X[:, idx["sex"]], axis=0)
    expected = {"bill_length_mm": [np.nanmean(X[:, idx["bill_length_mm"][0]])],
                "sex": list(np.eye(2)[int(np.argmax(sex_counts))]), "body_mass_g": [4000.0]}
    filled = X.copy()
    for column, cols_at in idx.items():
        for i, v in zip(cols_at, expected[column], strict=True):
            filled[np.isnan(filled[:, i]), i] = v
            assert prep.fill[i] == pytest.approx(v, abs=1e-9)
    np.testing.assert_allclose(Z, (filled - prep.center) / prep.scale, rtol=0, atol=1e-9)
    # a gap in a column that refuses them is refused by the transform too (rows that skipped the loader)
    X_bad = X.copy()
    X_bad[0, names.index("year")] = np.nan
    with pytest.raises(DataError, match="row 1, input 'year': missing, and the schema refuses gaps there"):
        prep.transform(X_bad)


# ---- check-data -------------------------------------------------------------------------------------

def _owner_yaml(tmp_path: Path, data: Path, schema: Path) -> Path:
    cfg = {"owner_id": "owner-0", "superlink": "127.0.0.1:9092", "root_certificates": "ca.crt",
           "auth_key": "supernode.key", "data": str(data), "state_dir": str(tmp_path / "state"),
           "schema": str(schema)}
    path = tmp_path / "owner.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BREAKS = [(0, "island", "Atlantis"), (2, "bill_length_mm", "99"), (3, "year", "NA"), (6, "species", "Emperor"),
          (7, "sex", "unknown"), (9, "flipper_length_mm", "1e6"), (11, "bill_depth_mm", "x")]


@pytest.mark.parametrize("broken", [3, 7])
def test_check_data_lists_every_bad_cell_and_fails(table, tmp_path, capsys, broken):
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(table.schema.to_dict()))
    rows = table.copy_rows()
    for r, column, value in BREAKS[:broken]:
        assert rows[r][table.at(column)] != "NA"
        rows[r][table.at(column)] = value
    data = table.write(tmp_path / "owner.csv", rows)
    assert owner_cli.main(["check-data", "--config", str(_owner_yaml(tmp_path, data, schema_file))]) == 1
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith(f"{data}: line ")]
    assert len(lines) == broken, out
    for (r, column, value), line in zip(BREAKS[:broken], lines, strict=True):
        assert f"line {r + 2}, column {column!r}: {value!r}" in line
    assert f"{broken} cell(s) break schema 'penguins'" in err
    # the loader names the first few and points to check-data for the rest
    with pytest.raises(DataError) as exc:
        load_table(data, table.schema)
    assert f"{broken} cell(s) break the schema" in str(exc.value)
    assert ("check-data` lists them all" in str(exc.value)) == (broken > 5)


def test_check_data_says_ok_on_a_good_file(table, tmp_path, capsys):
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(table.schema.to_dict()))
    data = table.write(tmp_path / "owner.csv")
    assert owner_cli.main(["check-data", "--config", str(_owner_yaml(tmp_path, data, schema_file))]) == 0
    out = capsys.readouterr().out
    assert f"{data}: {len(table.rows)} rows, 7 columns (10 model inputs)" in out and out.rstrip().endswith(": ok")


def test_check_data_refuses_a_header_that_does_not_match(table, tmp_path, capsys):
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(table.schema.to_dict()))
    header, rows = _drop(table, "sex")
    data = table.write(tmp_path / "owner.csv", rows, header)
    assert owner_cli.main(["check-data", "--config", str(_owner_yaml(tmp_path, data, schema_file))]) == 1
    err = capsys.readouterr().err
    assert f"{data}:1: header lacks column(s) the schema 'penguins' declares: 'sex'" in err, err


# ---- Parquet ------------------------------------------------------------------------------------------

def test_parquet_loads_to_the_same_rows_as_csv(table, tmp_path):
    pytest.importorskip("pyarrow.parquet", exc_type=ImportError)
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {c.name: c.kind for c in table.schema.columns}

    def cell(column: str, text: str) -> object:
        if text == "NA":
            return None
        kind = kinds.get(column)
        return float(text) if kind == "numeric" else int(text) if kind == "integer" else text

    columns = {h: [cell(h, r[i]) for r in table.rows] for i, h in enumerate(table.header)}
    path = tmp_path / "owner.parquet"
    pq.write_table(pa.table(columns), path)
    X_csv, y_csv = load_table(table.write(tmp_path / "owner.csv"), table.schema)
    X_pq, y_pq = load_table(path, table.schema)
    np.testing.assert_array_equal(X_pq, X_csv)
    np.testing.assert_array_equal(y_pq, y_csv)
    columns["island"][BROKEN_ROW] = "Atlantis"
    pq.write_table(pa.table(columns), path)
    problems = read_typed(path, table.schema).problems
    assert [(p.column, p.value) for p in problems] == [("island", "Atlantis")]


# ---- draft-schema -------------------------------------------------------------------------------------

def test_draft_schema_loads_contains_the_data_and_warns(table, tmp_path, capsys):
    data = table.write(tmp_path / "owner.csv")
    assert owner_cli.main(["draft-schema", "--data", str(data), "--label", "species"]) == 0
    text = capsys.readouterr().out
    head = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "reveal something about them" in head and "bounds" in head and "categories" in head
    draft = DatasetSchema.from_mapping(yaml.safe_load(text))
    assert draft.typed and draft.label_column == "species"
    assert sorted(draft.classes) == ["Adelie", "Chinstrap", "Gentoo"]
    for col in draft.columns:
        cells = [r[table.at(col.name)] for r in table.rows if r[table.at(col.name)] != "NA"]
        if col.kind in ("numeric", "integer"):
            values = [float(c) for c in cells]
            assert col.min <= min(values) and max(values) <= col.max, col
        elif col.kind == "categorical":
            assert set(cells) <= set(col.categories), col
    X, y = load_table(data, draft)  # the rows it was drafted from fit it
    assert len(X) == len(table.rows) == len(y)


def test_draft_schema_out_writes_once_and_never_overwrites(table, tmp_path, capsys):
    data = table.write(tmp_path / "owner.csv")
    out = tmp_path / "draft.yaml"
    argv = ["draft-schema", "--data", str(data), "--label", "species", "--out", str(out)]
    assert owner_cli.main(argv) == 0
    assert "review it before sharing" in capsys.readouterr().err
    assert DatasetSchema.load(out).typed
    out.write_text("# reviewed by a person\n")
    assert owner_cli.main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "# reviewed by a person\n"
