"""Load a data owner's local table and check it against the schema.

A typed schema (named columns) reads CSV with a header or Parquet, columns in any
order (``typed_table``); a legacy schema (one range for every column) reads CSV,
NPZ or IDX. Every problem becomes a DataError naming the file and, for CSV, the line.
"""

from __future__ import annotations

import csv
import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.contracts.typed_table import TypedTable, csv_rows, encode_rows, parquet_rows, refuse
from fedfhe_common.runtime.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_MAX_DIMS = 32  # numpy's limit on array dimensions


def _open_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise DataError(path, f"cannot read: {exc}") from None
    if not raw:
        raise DataError(path, "file is empty")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(path, f"corrupt gzip: {exc}") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX array (the MNIST format), gzipped or not."""
    raw = _open_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(path, "not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES or not 0 < ndim <= IDX_MAX_DIMS:
        raise DataError(path, f"not an IDX file (type code 0x{code:02x}, {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(path, "truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on hostile dimensions
    if len(raw) - header != expected:
        raise DataError(path, f"IDX body has {len(raw) - header} bytes, header says {expected}")
    if expected == 0:
        raise DataError(path, f"IDX array is empty (shape {shape})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def idx_labels_path(images: Path) -> Path:
    """train-images-idx3-ubyte[.gz] -> train-labels-idx1-ubyte[.gz]."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    return images.with_name(name)


def _load_idx(path: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(path)
    labels = labels or idx_labels_path(path)
    if labels == path:
        raise DataError(path, "cannot find the labels file (name it *-labels-idx1-*)")
    y = read_idx(labels)
    if y.ndim != 1:
        raise DataError(labels, f"labels must be 1-dimensional, got shape {y.shape}")
    X = images.reshape(images.shape[0], -1)
    if X.shape[0] != y.shape[0]:
        raise DataError(path, f"{X.shape[0]} images but {y.shape[0]} labels in {labels.name}")
    return X.astype(np.float64), y


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not _open_bytes(path).startswith(b"PK"):
        raise DataError(path, "not a valid NPZ file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"X", "y"} - set(npz.files)
            if missing:
                raise DataError(path, f"NPZ needs arrays 'X' and 'y'; missing {', '.join(sorted(missing))}")
            X, y = npz["X"], npz["y"]
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(path, f"NPZ holds objects, refused (no pickle): {exc}") from None
        raise DataError(path, f"not a valid NPZ file: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, zlib.error, MemoryError
        raise DataError(path, f"not a valid NPZ file: {exc}") from None
    if X.ndim != 2:
        raise DataError(path, f"'X' must be 2-dimensional, got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(path, f"'y' must be 1-dimensional with {X.shape[0]} entries, got shape {y.shape}")
    if X.dtype.kind not in "iuf" or y.dtype.kind not in "iuf":  # not complex, dates, strings, records
        raise DataError(path, f"'X' and 'y' must be real numbers, got {X.dtype} and {y.dtype}")
    return X.astype(np.float64), y


def _load_csv(path: Path, schema: DatasetSchema) -> tuple[np.ndarray, np.ndarray]:
    text = _open_bytes(path)
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    rows = csv.reader(lines)
    try:
        return _parse_csv(path, rows, schema)
    except csv.Error as exc:  # NUL bytes, a field over csv.field_size_limit()
        raise DataError(path, f"not a readable CSV table: {exc}", line=rows.line_num or None) from None


def _parse_csv(path: Path, rows: Any, schema: DatasetSchema) -> tuple[np.ndarray, np.ndarray]:
    header = next(rows, None)
    if not header or all(not c.strip() for c in header):
        raise DataError(path, "file is empty", line=1)
    header = [c.strip() for c in header]
    if schema.label_column not in header:
        raise DataError(path, f"header has no label column {schema.label_column!r}", line=1)
    if len(header) != schema.n_features + 1:
        raise DataError(
            path, f"header has {len(header)} columns, schema needs {schema.n_features} features + 1 label", line=1
        )
    label_at = header.index(schema.label_column)
    X_rows: list[list[float]] = []
    y_rows: list[float] = []
    for lineno, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(path, f"{len(row)} columns, expected {len(header)}", line=lineno)
        values = []
        for col, cell in enumerate(row):
            try:
                values.append(float(cell))
            except ValueError:
                raise DataError(path, f"column {header[col]!r}: {cell!r} is not a number", line=lineno) from None
        y_rows.append(values.pop(label_at))
        X_rows.append(values)
    if not X_rows:
        raise DataError(path, "no data rows after the header")
    return np.asarray(X_rows, dtype=np.float64), np.asarray(y_rows)


def read_typed(path: str | Path, schema: DatasetSchema, need_label: bool = True) -> TypedTable:
    """Every row of a CSV or Parquet file encoded against a typed schema, with every cell problem listed."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        header, rows = csv_rows(p, _open_bytes(p))
    elif name.endswith((".parquet", ".pq")):
        _open_bytes(p)  # the same messages for a missing, unreadable or empty file
        header, rows = parquet_rows(p)
    else:
        raise DataError(p, f"schema {schema.name!r} names its columns: expected a .csv (with a header) or "
                           ".parquet file")
    return encode_rows(p, header, rows, schema, need_label)


def load_typed(path: str | Path, schema: DatasetSchema,
               need_label: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(X, y)`` of a typed table (X encoded, NaN for allowed gaps); any cell problem refuses the file."""
    table = read_typed(path, schema, need_label)
    if table.problems:
        raise refuse(Path(path), table.problems)
    return table.X, table.y


def load_table(
    path: str | Path, schema: DatasetSchema, labels_path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(X, y)`` and validate it against ``schema``.

    Typed schemas: the encoded inputs (``preprocessing.Preprocessing.transform`` makes
    them model inputs); legacy schemas: the rows as they are (CSV, NPZ or IDX).
    """
    p = Path(path)
    if schema.typed:
        X, y = load_typed(p, schema)
        assert y is not None
        return X, y
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        X, y = _load_csv(p, schema)
    elif name.endswith(".npz"):
        X, y = _load_npz(p)
    elif "idx" in name:
        X, y = _load_idx(p, Path(labels_path) if labels_path else None)
    else:
        raise DataError(p, "unknown format: expected .csv, .npz or an IDX file (*-idx3-ubyte[.gz])")
    return validate(p, X, y, schema)


def validate(path: Path, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> tuple[np.ndarray, np.ndarray]:
    """Check shape, finiteness, bounds and labels; the first bad row is named."""
    if X.shape[0] == 0:
        raise DataError(path, "no rows")
    if X.shape[1] != schema.n_features:
        raise DataError(path, f"{X.shape[1]} features per row, schema {schema.name!r} needs {schema.n_features}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(path, f"row {int(np.argmax(bad)) + 1} has NaN or infinite values")
    out = ((schema.feature_min > X) | (schema.feature_max < X)).any(axis=1)
    if out.any():
        r = int(np.argmax(out))
        raise DataError(
            path,
            f"row {r + 1} has a feature outside the schema bounds [{schema.feature_min}, {schema.feature_max}]",
        )
    if schema.is_classifier:
        allowed = np.asarray(schema.label_codes)
        unknown = ~np.isin(y, allowed)
        if unknown.any():
            r = int(np.argmax(unknown))
            raise DataError(path, f"row {r + 1} has label {y[r]!r}, not one of the schema's classes {schema.classes}")
        y = y.astype(np.int64)
    else:
        if not np.isfinite(y.astype(np.float64)).all():
            raise DataError(path, "targets must be finite numbers")
        y = y.astype(np.float64)
    return X, y


def save_csv(path: str | Path, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> None:
    """Write a legacy-schema table in the CSV form ``load_table`` reads (features then label)."""
    header = [f"f{i}" for i in range(schema.n_features)] + [schema.label_column]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row, label in zip(X, y, strict=True):
            w.writerow([f"{v:g}" for v in row] + [f"{label:g}" if not schema.is_classifier else str(int(label))])
