"""Rows in, predictions out: the files around an encrypted prediction.

Input is what ``load_table`` reads (CSV with a label column, NPZ, IDX), or,
for rows without labels, a CSV of just the feature columns or an NPZ with
only ``X``. Output is CSV or JSON, chosen by the file suffix.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.data import load_table, load_typed, validate
from fedfhe_common.runtime.errors import DataError
from fedfhe_common.runtime.fileio import write_atomic
from fedfhe_owner.predict.encrypted import PredictResult


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError):
        return []


def _unlabelled_csv(path: Path, schema: DatasetSchema) -> np.ndarray:
    rows: list[list[float]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if len(header) != schema.n_features:
            raise DataError(path, f"header has {len(header)} columns, schema needs {schema.n_features} features", 1)
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(path, f"{len(row)} columns, expected {len(header)}", line=lineno)
            try:
                rows.append([float(c) for c in row])
            except ValueError:
                bad = next(c for c in row if not _is_float(c))
                raise DataError(path, f"{bad!r} is not a number", line=lineno) from None
    if not rows:
        raise DataError(path, "no data rows after the header")
    return np.asarray(rows, dtype=np.float64)


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_rows(path: Path, schema: DatasetSchema, labels: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, y) with labels when the file has them, (X, None) otherwise; rows are checked against the schema.

    Labels come back as the schema declares them (strings stay strings), to compare with predictions.
    """
    path = Path(path)
    if schema.typed:
        X, y = load_typed(path, schema, need_label=False)
        return X, None if y is None else schema.decode_labels(y)
    name = path.name.lower()
    unlabelled: np.ndarray | None = None
    if name.endswith(".csv") and schema.label_column not in _csv_header(path):
        unlabelled = _unlabelled_csv(path, schema)
    elif name.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "y" not in npz.files and "X" in npz.files:
                    unlabelled = np.asarray(npz["X"], dtype=np.float64)
        except (OSError, ValueError):
            pass  # load_table reports it with the file name
    if unlabelled is None:
        return load_table(path, schema, labels)
    if unlabelled.ndim != 2:
        raise DataError(path, f"'X' must be 2-dimensional, got shape {unlabelled.shape}")
    dummy = np.full(len(unlabelled), schema.classes[0] if schema.is_classifier else 0.0)
    X, _ = validate(path, unlabelled, dummy, schema)
    return X, None


def write_predictions(path: Path, result: PredictResult, y: np.ndarray | None = None) -> None:
    """CSV (row, prediction[, label][, p_<class>...]) or JSON (the same plus the run summary)."""
    path = Path(path)
    prob_cols = [f"p_{c}" for c in result.classes] if result.probabilities else []
    if path.suffix.lower() == ".json":
        rows: list[dict[str, Any]] = []
        for i, pred in enumerate(result.predictions):
            row: dict[str, Any] = {"row": i, "prediction": pred.item()}
            if y is not None:
                row["label"] = np.asarray(y)[i].item()
            if result.probabilities:
                row["probabilities"] = [float(v) for v in result.scores[i]]
            rows.append(row)
        doc = {**result.summary(), "classes": result.classes, "predictions": rows}
        if y is not None:
            doc.update(result.metrics(y))  # a regressor's are R² and MAE, never an accuracy of 0
        write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
        return
    lines = [",".join(["row", "prediction"] + (["label"] if y is not None else []) + prob_cols)]
    for i, pred in enumerate(result.predictions):
        cells = [str(i), f"{pred.item():g}" if isinstance(pred.item(), float) else str(pred.item())]
        if y is not None:
            cells.append(str(np.asarray(y)[i].item()))
        if result.probabilities:
            cells += [f"{v:.6g}" for v in result.scores[i]]
        lines.append(",".join(cells))
    write_atomic(path, ("\n".join(lines) + "\n").encode())
