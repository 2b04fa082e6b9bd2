"""Read a table with named columns (CSV with a header, or Parquet) against a typed schema.

Columns are matched by name, in any order. Every cell that breaks the schema
becomes a ``CellProblem`` (line, column, value, rule): ``check-data`` lists them
all, the loaders refuse the file naming the first few. The result is the
encoded matrix (numbers, booleans as 0/1, categories one-hot, a gap as NaN)
that ``preprocessing.Preprocessing.transform`` turns into model inputs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfhe_common.contracts.schema import FALSE_WORDS, TRUE_WORDS, ColumnSpec, DatasetSchema
from fedfhe_common.runtime.errors import DataError

SHOWN_PROBLEMS = 5


@dataclass(frozen=True)
class CellProblem:
    """One cell that breaks the schema."""

    line: int  # CSV line (header = 1), or Parquet row + 1
    column: str
    value: str
    rule: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column!r}: {self.value[:60]!r} {self.rule}"


@dataclass
class TypedTable:
    X: np.ndarray  # encoded inputs, NaN where a cell is missing
    y: np.ndarray | None  # label codes (classification) or targets; None when the file has no label column
    lines: np.ndarray  # the file line of each row
    problems: list[CellProblem]


def refuse(path: Path, problems: list[CellProblem]) -> DataError:
    shown = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more: `fedfhe-owner check-data` lists them all)" \
        if len(problems) > SHOWN_PROBLEMS else ""
    return DataError(path, f"{len(problems)} cell(s) break the schema: {shown}{more}")


def _encode_cell(col: ColumnSpec, text: str, missing: bool) -> tuple[list[float], str | None]:
    """Encoded inputs of one cell, or the rule it breaks."""
    nan = [math.nan] * col.width
    if missing:
        return nan, ("is missing, and the schema refuses gaps here (missing: refuse)"
                     if col.missing == "refuse" else None)
    if col.kind == "categorical":
        if text in col.categories:
            return [1.0 if c == text else 0.0 for c in col.categories], None
        if col.unknown == "ignore":
            return [0.0] * col.width, None
        return nan, f"is not one of the categories {col.categories}"
    if col.kind == "boolean":
        low = text.lower()
        if low in TRUE_WORDS:
            return [1.0], None
        if low in FALSE_WORDS:
            return [0.0], None
        return nan, "is not a boolean (true/false, yes/no, 1/0)"
    try:
        value = float(text)
    except ValueError:
        return nan, "is not a number"
    if not math.isfinite(value):
        return nan, "is not a finite number"
    if col.kind == "integer" and not value.is_integer():
        return nan, "is not an integer"
    assert col.min is not None and col.max is not None
    if not col.min <= value <= col.max:
        return nan, f"lies outside the declared bounds [{col.min:g}, {col.max:g}]"
    return [value], None


def _label(schema: DatasetSchema, text: str, missing: bool) -> tuple[float, str | None]:
    if missing:
        return math.nan, "is missing: every training row needs a label"
    if schema.is_classifier:
        for code, cls in zip(schema.label_codes, schema.classes, strict=True):
            if text == str(cls):
                return float(code), None
        try:  # an integer class written as 3.0
            number = float(text)
            if number.is_integer() and int(number) in schema.classes:
                return float(schema.label_codes[schema.classes.index(int(number))]), None
        except ValueError:
            pass
        return math.nan, f"is not one of the schema's classes {schema.classes}"
    try:
        value = float(text)
    except ValueError:
        return math.nan, "is not a number (a regression target)"
    if not math.isfinite(value):
        return math.nan, "is not a finite number"
    if schema.target_min is not None and not schema.target_min <= value <= schema.target_max:  # type: ignore[operator]
        return math.nan, f"lies outside the declared target bounds [{schema.target_min:g}, {schema.target_max:g}]"
    return value, None


def check_header(path: Path, header: list[str], schema: DatasetSchema, need_label: bool) -> dict[str, int]:
    """Column name -> position; a duplicate, a missing or an undeclared column refuses the file."""
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(path, f"header names column(s) twice: {', '.join(map(repr, dup))}", line=1)
    declared = [c.name for c in schema.columns]
    missing = [n for n in declared if n not in header]
    if need_label and schema.label_column not in header:
        missing.append(schema.label_column)
    if missing:
        raise DataError(path, f"header lacks column(s) the schema {schema.name!r} declares: "
                              f"{', '.join(map(repr, missing))}", line=1)
    known = set(declared) | {schema.label_column} | set(schema.ignore_columns)
    extra = [h for h in header if h not in known]
    if extra:
        raise DataError(path, f"header has column(s) the schema {schema.name!r} does not declare: "
                              f"{', '.join(map(repr, extra[:10]))} (declare them, or list them in ignore_columns)",
                        line=1)
    return {h: i for i, h in enumerate(header)}


def encode_rows(path: Path, header: list[str], rows: Iterable[tuple[int, list[str]]], schema: DatasetSchema,
                need_label: bool = True) -> TypedTable:
    """Encode text cells row by row, collecting every problem."""
    at = check_header(path, header, schema, need_label)
    has_label = schema.label_column in at
    markers = set(schema.missing_markers)
    X_rows: list[list[float]] = []
    y_rows: list[float] = []
    lines: list[int] = []
    problems: list[CellProblem] = []
    for lineno, row in rows:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            problems.append(CellProblem(lineno, "*", ",".join(row)[:60], f"has {len(row)} cells, the header "
                                                                          f"{len(header)}"))
            continue
        encoded: list[float] = []
        for col in schema.columns:
            text = row[at[col.name]].strip()
            values, rule = _encode_cell(col, text, text in markers)
            if rule:
                problems.append(CellProblem(lineno, col.name, text, rule))
            encoded.extend(values)
        if has_label:
            text = row[at[schema.label_column]].strip()
            value, rule = _label(schema, text, text in markers)
            if rule:
                problems.append(CellProblem(lineno, schema.label_column, text, rule))
            y_rows.append(value)
        X_rows.append(encoded)
        lines.append(lineno)
    if not X_rows and not problems:
        raise DataError(path, "no data rows after the header")
    X = np.asarray(X_rows, dtype=np.float64).reshape(len(X_rows), schema.n_features)
    y = None
    if has_label:
        y = np.asarray(y_rows, dtype=np.float64)
        if schema.is_classifier:
            y = np.nan_to_num(y, nan=-1).astype(np.int64)
    return TypedTable(X, y, np.asarray(lines, dtype=np.int64), problems)


def csv_rows(path: Path, raw: bytes) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(path, f"not a readable CSV table: {exc}", line=1) from None
    if not header or all(not c.strip() for c in header):
        raise DataError(path, "file is empty", line=1)

    def body() -> Iterator[tuple[int, list[str]]]:
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise DataError(path, f"not a readable CSV table: {exc}", line=reader.line_num or None) from None

    return header, body()


def _parquet_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def parquet_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A Parquet file's columns as text cells (None and NaN become gaps); row i (from 0) is "line" i + 2, as in a CSV
    whose header is line 1."""
    try:
        import pyarrow.parquet as pq  # lazy: optional dependency: the caller reports it missing
    except ImportError:
        raise DataError(path, "reading Parquet needs pyarrow: pip install 'fedfhe-common[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError: any unreadable file is a bad file
        raise DataError(path, f"not a readable Parquet file: {str(exc)[:200]}") from None
    header = [str(n) for n in table.column_names]
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]

    def body() -> Iterator[tuple[int, list[str]]]:
        for i in range(table.num_rows):
            yield i + 2, [_parquet_text(c[i]) for c in columns]

    return header, body()
