"""fedfhe-partition: write per-owner data files and a public test set for demos and tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedfhe_common.ml.data import save_csv
from fedfhe_common.runtime.console import run, set_example

from .datasets import BUILTIN, is_tabular, load_builtin
from .partition import partition, split_holdout
from .tabular import write_tabular_partitions


def write_partitions(
    dataset: str,
    owners: int,
    out: Path,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    fmt: str = "npz",
    max_rows: int | None = None,
) -> dict:
    """Write owner-<i>.<fmt>, public-test.npz and partition.json; returns the summary.

    A real table (``tabular``) is written as CSV files of text cells with its typed schema.yaml.
    """
    if is_tabular(dataset):
        summary = write_tabular_partitions(dataset, owners, out, scheme, alpha, seed, test_fraction)
        summary |= {"dataset": dataset, "scheme": scheme, "alpha": alpha, "seed": seed}
        (out / "partition.json").write_text(json.dumps(summary, indent=2))
        return summary
    X, y, schema = load_builtin(dataset, max_rows=max_rows, seed=seed)
    X_rest, y_rest, X_test, y_test = split_holdout(X, y, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, idx in enumerate(partition(y_rest, owners, scheme, alpha, seed)):
        path = out / f"owner-{i}.{fmt}"
        if fmt == "csv":
            save_csv(path, X_rest[idx], y_rest[idx], schema)
        else:
            np.savez_compressed(path, X=X_rest[idx], y=y_rest[idx])
        if schema.is_classifier:
            counts: object = np.bincount(y_rest[idx], minlength=len(schema.classes)).tolist()
        else:
            counts = {"min": float(y_rest[idx].min()), "median": float(np.median(y_rest[idx])),
                      "max": float(y_rest[idx].max())}
        files.append({"path": str(path), "rows": int(len(idx)), "label_counts": counts})
    np.savez_compressed(out / "public-test.npz", X=X_test, y=y_test)
    (out / "schema.json").write_text(schema.to_json())
    summary = {
        "schema": dataset,
        "dataset": dataset,
        "scheme": scheme,
        "alpha": alpha,
        "seed": seed,
        "owners": files,
        "public_test": {"path": str(out / "public-test.npz"), "rows": int(len(y_test))},
    }
    (out / "partition.json").write_text(json.dumps(summary, indent=2))
    return summary


def _partition(args: argparse.Namespace) -> None:
    summary = write_partitions(
        args.dataset, args.owners, args.out, args.scheme, args.alpha, args.seed,
        args.test_fraction, args.file_format, args.max_rows,
    )
    for f in summary["owners"]:
        print(f"{f['path']}: {f['rows']} rows, labels {f['label_counts']}")
    print(f"{summary['public_test']['path']}: {summary['public_test']['rows']} rows (public test set)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedfhe-partition", description=__doc__)
    ap.add_argument("--dataset", default="digits", choices=list(BUILTIN), help="built-in dataset (default digits)")
    ap.add_argument("--owners", type=int, default=3, help="number of data owners (default 3)")
    ap.add_argument("--scheme", default="iid", choices=["iid", "dirichlet"],
                    help="iid: even label mix; dirichlet: skewed per owner by --alpha (default iid)")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller = more skew)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    ap.add_argument("--test-fraction", type=float, default=0.2,
                    help="share of the rows kept as the public test set (default 0.2)")
    # --file-format, not --format: every other fedfhe command's --format is its output (text or json).
    ap.add_argument("--file-format", default="npz", choices=["npz", "csv"],
                    help="the owner files' format (default npz)")
    ap.add_argument("--max-rows", type=int, default=None, help="use at most this many rows (default: all)")
    ap.add_argument("--out", type=Path, required=True, help="directory for owner-<i> files, public-test.npz and "
                                                            "partition.json")
    set_example(ap, "fedfhe-partition --dataset digits --owners 3 --scheme dirichlet --alpha 0.5 --out data")
    ap.set_defaults(fn=_partition)
    return run(ap, argv, errors=(ValueError,))
