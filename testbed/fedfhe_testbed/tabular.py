"""Real tables for the demo and the bench: named columns of mixed kinds, as data owners hold them.

scikit-learn's breast cancer and wine (bundled, numeric columns on very different
scales), its diabetes table in raw units (a regression target) and Palmer penguins
(the ``palmerpenguins`` package's CSV: categories, gaps written ``NA``, string labels).
Nothing downloads. Each has a reviewed typed schema in ``schemas/`` (made with ``fedfhe-owner draft-schema``, bounds
rounded outwards, then read by a person), the way an operator would share one.
"""

from __future__ import annotations

import csv
import io
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.runtime.errors import DataError

from .partition import partition

TABULAR = ("breast-cancer", "wine", "penguins", "diabetes-table")


def schema_path(name: str) -> Path:
    """The reviewed schema file shipped with the test bed."""
    return Path(str(resources.files("fedfhe_testbed") / "schemas" / f"{name}.yaml"))


def tabular_schema(name: str) -> DatasetSchema:
    return DatasetSchema.load(schema_path(name))


def _sklearn_table(name: str) -> tuple[list[str], list[list[str]]]:
    from sklearn import datasets  # lazy: scikit-learn takes ~2 s to import

    if name == "diabetes-table":  # the raw units (years, mmHg, mg/dl; sex coded 1/2), a regression target
        d = datasets.load_diabetes(scaled=False)
        header = [*d.feature_names, "progression"]
        rows = [[f"{v:g}" for v in x] + [f"{t:g}"] for x, t in zip(d.data, d.target, strict=True)]
        return header, rows
    d = datasets.load_breast_cancer() if name == "breast-cancer" else datasets.load_wine()
    names = [str(n).replace(" ", "_") for n in d.feature_names]
    targets = [str(t) for t in d.target_names]
    header = [*names, "diagnosis" if name == "breast-cancer" else "cultivar"]
    rows = [[f"{v:g}" for v in x] + [targets[int(t)]] for x, t in zip(d.data, d.target, strict=True)]
    return header, rows


def _penguins() -> tuple[list[str], list[list[str]]]:
    try:
        import palmerpenguins  # lazy: optional dependency: the caller reports it missing
    except ImportError:
        raise DataError("penguins", "the palmerpenguins package is not installed (pip install palmerpenguins)") \
            from None
    text = (resources.files(palmerpenguins) / "data" / "penguins.csv").read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    return header, [row for row in reader if row]


def load_tabular(name: str) -> tuple[list[str], list[list[str]], DatasetSchema]:
    """The whole table as text cells (the header first), and its schema."""
    if name not in TABULAR:
        raise DataError(name, f"unknown table (known: {', '.join(TABULAR)})")
    header, rows = _penguins() if name == "penguins" else _sklearn_table(name)
    return header, rows, tabular_schema(name)


def labels_of(header: list[str], rows: list[list[str]], schema: DatasetSchema) -> np.ndarray:
    """Label codes per row, for stratified and Dirichlet splits (rows without a label are dropped first)."""
    at = header.index(schema.label_column)
    names = [str(c) for c in schema.classes]
    return np.asarray([names.index(r[at]) if schema.is_classifier else float(r[at]) for r in rows])


def write_csv(path: Path, header: list[str], rows: list[list[str]], order: list[int] | None = None) -> None:
    """A CSV as an owner would hold it; ``order`` permutes the columns (names keep them matched)."""
    order = order or list(range(len(header)))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([header[i] for i in order])
    for r in rows:
        w.writerow([r[i] for i in order])
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_tabular_partitions(name: str, owners: int, out: Path, scheme: str, alpha: float, seed: int,
                             test_fraction: float) -> dict:
    """owner-<i>.csv (odd owners' columns in reverse order: names match them), public-test.csv, schema.yaml.

    Rows keep their text cells as the table has them, gaps and category names included:
    every owner's file is what a real owner would hold, and loading it is the owners' job.
    """
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn takes ~2 s to import


    header, rows, schema = load_tabular(name)
    y = labels_of(header, rows, schema)
    index = np.arange(len(rows))
    rest, test = train_test_split(index, test_size=test_fraction, random_state=seed,
                                  stratify=y if schema.is_classifier else None)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(schema_path(name), out / "schema.yaml")
    files = []
    y_rest = y[rest].astype(np.int64) if schema.is_classifier else y[rest]
    for i, idx in enumerate(partition(y_rest, owners, scheme, alpha, seed)):
        path = out / f"owner-{i}.csv"
        order = list(range(len(header)))[::-1] if i % 2 else None
        write_csv(path, header, [rows[j] for j in rest[idx]], order)
        counts = np.bincount(y_rest[idx], minlength=len(schema.classes)).tolist() if schema.is_classifier else {}
        files.append({"path": str(path), "rows": int(len(idx)), "label_counts": counts})
    write_csv(out / "public-test.csv", header, [rows[j] for j in test])
    return {"owners": files, "public_test": {"path": str(out / "public-test.csv"), "rows": int(len(test))},
            "schema": str(out / "schema.yaml")}
