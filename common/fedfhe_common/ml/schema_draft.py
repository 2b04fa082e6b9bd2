"""A draft typed schema from a local file, for a person to review before it is shared.

Runs on the owner's own host. Kinds are guessed from the cells, bounds are
rounded outwards to a power of ten's step, and the categories and classes are
the ones observed: all of that says something about the rows, so the draft says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from fedfhe_common.contracts.schema import DEFAULT_MISSING_MARKERS, FALSE_WORDS, TRUE_WORDS
from fedfhe_common.contracts.typed_table import csv_rows, parquet_rows
from fedfhe_common.ml.data import _open_bytes
from fedfhe_common.runtime.errors import DataError

MAX_CATEGORIES = 50
WARNING = """\
# DRAFT schema made by `fedfhe-owner draft-schema` from {path} ({rows} rows).
# Review every line before sharing it: the bounds, categories and classes below were read off
# this owner's rows and reveal something about them (ranges, which categories occur).
# Widen the bounds to what the column can take in principle; drop rare categories you do not
# want to disclose (unknown: ignore encodes them as none), and choose a missing rule per column.
"""


def _outward(lo: float, hi: float) -> tuple[float, float]:
    """Bounds rounded outwards to a step of a power of ten below the span."""
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    step = 10.0 ** math.floor(math.log10(span))
    low, high = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if low == high:
        high = low + step
    return float(f"{low:.6g}"), float(f"{high:.6g}")


def _numbers(cells: list[str]) -> list[float] | None:
    out = []
    for c in cells:
        try:
            v = float(c)
        except ValueError:
            return None
        if not math.isfinite(v):
            return None
        out.append(v)
    return out


def _column(name: str, cells: list[str], markers: set[str]) -> dict[str, Any]:
    values = [c for c in cells if c not in markers]
    if not values:
        raise DataError(name, "column has no values in this file: nothing to draft it from; write its entry by hand "
                              "or list it in ignore_columns")
    gaps = len(values) < len(cells)
    spec: dict[str, Any] = {"name": name}
    numbers = _numbers(values)
    if values and all(v.lower() in TRUE_WORDS + FALSE_WORDS for v in values) and not (
            numbers is not None and len(set(values)) > 2):
        spec["kind"] = "boolean"
    elif numbers:
        spec["kind"] = "integer" if all(v.is_integer() for v in numbers) else "numeric"
        spec["min"], spec["max"] = _outward(min(numbers), max(numbers))
    else:
        cats = sorted(set(values))
        if len(cats) > MAX_CATEGORIES:
            raise DataError(name, f"{len(cats)} distinct values: too many categories for a draft (an id or free "
                                  "text? list it in ignore_columns)")
        spec["kind"] = "categorical"
        spec["categories"] = cats if len(cats) >= 2 else [*cats, "other"]
    if gaps:
        spec["missing"] = "mean" if spec["kind"] in ("numeric", "integer") else "mode"
    return spec


def draft_schema(path: Path, label: str, name: str = "", task: str = "") -> tuple[str, int]:
    """YAML text of a draft schema (with its warning header) and the row count it was read from."""
    path = Path(path)
    if path.name.lower().endswith((".parquet", ".pq")):
        header, rows = parquet_rows(path)
    else:
        header, rows = csv_rows(path, _open_bytes(path))
    header = [h.strip() for h in header]
    if label not in header:
        raise DataError(path, f"no label column {label!r} in the header ({', '.join(header[:20])})", line=1)
    columns: list[list[str]] = [[] for _ in header]
    count = 0
    for _, row in rows:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            continue
        count += 1
        for i, cell in enumerate(row):
            columns[i].append(cell.strip())
    if not count:
        raise DataError(path, "no data rows after the header")
    markers = set(DEFAULT_MISSING_MARKERS)
    doc: dict[str, Any] = {"name": name or path.stem.split(".")[0]}
    labels = [c for c in columns[header.index(label)] if c not in markers]
    numbers = _numbers(labels)
    distinct = sorted(set(labels))
    regression = task == "regression" or (not task and numbers is not None and len(distinct) > 20)
    if regression:
        if numbers is None:
            raise DataError(path, f"label column {label!r} is not numeric: it cannot be a regression target")
        doc["task"] = "regression"
        doc["target_min"], doc["target_max"] = _outward(min(numbers), max(numbers))
    else:
        doc["task"] = "classification"
        doc["classes"] = [int(float(v)) for v in distinct] if numbers is not None and all(
            float(v).is_integer() for v in distinct) else distinct
        if len(distinct) < 2:  # this owner holds one class: the federation's others must be added by hand
            raise DataError(path, f"label column {label!r} holds only {distinct} in this file; a schema lists every "
                                  "class of the federation: pass --task regression for a target, or draft from a "
                                  "file with every class and review it")
    doc["label_column"] = label
    doc["columns"] = [_column(h, columns[i], markers) for i, h in enumerate(header) if h != label]
    text = WARNING.format(path=path.name, rows=count) + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return text, count
