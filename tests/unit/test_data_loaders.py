"""Every bad data file is a DataError naming the file (and line) and the problem."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.data import load_table, save_csv
from fedfhe_common.runtime.errors import DataError

SCHEMA = DatasetSchema(name="tiny", n_features=3, feature_min=0, feature_max=10, classes=[0, 1, 2])


def _csv(tmp_path, text: str):
    p = tmp_path / "owner.csv"
    p.write_text(text)
    return p


def test_csv_roundtrip(tmp_path):
    X = np.array([[1, 2, 3], [4, 5, 6.5]])
    y = np.array([0, 2])
    save_csv(tmp_path / "t.csv", X, y, SCHEMA)
    X2, y2 = load_table(tmp_path / "t.csv", SCHEMA)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_table(tmp_path / "nope.csv", SCHEMA)


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"owner\.csv: file is empty"):
        load_table(_csv(tmp_path, ""), SCHEMA)


def test_header_only(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        load_table(_csv(tmp_path, "a,b,c,label\n"), SCHEMA)


def test_wrong_column_count_names_line(tmp_path):
    p = _csv(tmp_path, "a,b,c,label\n1,2,3,0\n1,2,0\n")
    with pytest.raises(DataError, match=r"owner\.csv:3: 3 columns, expected 4"):
        load_table(p, SCHEMA)


def test_header_with_wrong_feature_count(tmp_path):
    with pytest.raises(DataError, match=r"owner\.csv:1: header has 3 columns"):
        load_table(_csv(tmp_path, "a,b,label\n1,2,0\n"), SCHEMA)


def test_non_numeric_cell_names_line_and_column(tmp_path):
    p = _csv(tmp_path, "a,b,c,label\n1,2,3,0\n1,x,3,1\n")
    with pytest.raises(DataError, match=r"owner\.csv:3: column 'b': 'x' is not a number"):
        load_table(p, SCHEMA)


def test_label_outside_schema(tmp_path):
    p = _csv(tmp_path, "a,b,c,label\n1,2,3,0\n1,2,3,7\n")
    with pytest.raises(DataError, match=r"row 2 has label 7\.0, not one of the schema's classes"):
        load_table(p, SCHEMA)


def test_feature_outside_bounds(tmp_path):
    with pytest.raises(DataError, match="outside the schema bounds"):
        load_table(_csv(tmp_path, "a,b,c,label\n1,2,30,0\n"), SCHEMA)


def test_npz_with_objects_is_refused(tmp_path):
    p = tmp_path / "o.npz"
    np.savez(p, X=np.array([[1, 2, 3]], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="no pickle"):
        load_table(p, SCHEMA)


def test_npz_missing_arrays(tmp_path):
    p = tmp_path / "o.npz"
    np.savez(p, features=np.zeros((2, 3)))
    with pytest.raises(DataError, match="missing X, y"):
        load_table(p, SCHEMA)


def test_garbage_npz(tmp_path):
    p = tmp_path / "o.npz"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a valid NPZ"):
        load_table(p, SCHEMA)


def _idx(path, arr: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_pair(tmp_path):
    _idx(tmp_path / "x-images-idx3-ubyte.gz", np.full((4, 1, 3), 2))
    _idx(tmp_path / "x-labels-idx1-ubyte.gz", np.array([0, 1, 2, 1]))
    X, y = load_table(tmp_path / "x-images-idx3-ubyte.gz", SCHEMA)
    assert X.shape == (4, 3) and list(y) == [0, 1, 2, 1]


def test_idx_truncated(tmp_path):
    p = tmp_path / "x-images-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 4, 3) + b"\x00" * 5)
    with pytest.raises(DataError, match="IDX body has 5 bytes, header says 12"):
        load_table(p, SCHEMA)


def test_unknown_extension(tmp_path):
    p = tmp_path / "data.parquet"
    p.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown format"):
        load_table(p, SCHEMA)
