"""Federated vs centralised accuracy, time per round and Flower's share of round time.

Every configuration is a real loopback federation (flower-superlink, one
flower-supernode per owner, TLS, SuperNode auth) run by this script; the
centralised baseline is a LogisticRegression on the union of the owners' rows,
scored on the same public test set in the same process.

    .venv/bin/python bench/federated.py [--quick] [--out bench/results/federated.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from fedfhe_common.data import load_table
from fedfhe_demo.cluster import Cluster
from fedfhe_demo.partition_cli import write_partitions
from fedfhe_server import config as coord
from fedfhe_server.training import run_training


def centralised_accuracy(data: Path, owners: int, schema) -> float:
    from sklearn.linear_model import LogisticRegression

    parts = [load_table(data / f"owner-{i}.npz", schema) for i in range(owners)]
    X = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    X_test, y_test = load_table(data / "public-test.npz", schema)
    return float(LogisticRegression(max_iter=1000).fit(X, y).score(X_test, y_test))


def one_run(dataset: str, owners: int, scheme: str, rounds: int, max_rows: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedfhe-bench-") as tmp:
        work = Path(tmp)
        summary = write_partitions(dataset, owners, work / "data", scheme=scheme, alpha=0.5, seed=0,
                                   max_rows=max_rows)
        names = [f"owner-{i}" for i in range(owners)]
        from fedfhe_common.schema import resolve_schema

        schema = resolve_schema(dataset)
        with Cluster(work) as c:
            c.make_pki(names)
            # 10 SuperNodes on 2 cores can starve one past Flower's heartbeat: let a round
            # complete with 80% of the owners and record how many answered.
            min_nodes = max(2, int(np.ceil(0.8 * owners)))
            cfg_path = c.coordinator_config(names, rounds=rounds, min_nodes=min_nodes, schema=dataset,
                                            public_test=str(work / "data" / "public-test.npz"))
            c.start_superlink(cfg_path)
            c.register(cfg_path)
            for i, name in enumerate(names):
                c.start_supernode(name, c.owner_config(name, work / "data" / f"owner-{i}.npz", schema=dataset))
            start = time.perf_counter()
            rows: list[dict] = []
            run_training(coord.load(cfg_path), on_round=rows.append)
            total = time.perf_counter() - start
        federated = rows[-1]["server"]["accuracy"]
        central = centralised_accuracy(work / "data", owners, schema)
        per_round = [r["seconds"] for r in rows]
        fit = [r["fit_seconds_max"] for r in rows]
        return {
            "dataset": dataset, "owners": owners, "scheme": scheme, "rounds": rounds,
            "rows_per_owner": [o["rows"] for o in summary["owners"]],
            "federated_accuracy": federated, "centralized_accuracy": central,
            "federated_over_centralized_accuracy": federated / central,
            "seconds_per_round": float(np.mean(per_round)),
            "fit_seconds_per_round": float(np.mean(fit)),
            "overhead_share": float(1 - np.sum(fit) / np.sum(per_round)),
            "run_seconds_total": total,
            "accuracy_per_round": [r["server"]["accuracy"] for r in rows],
            "nodes_per_round": [r["fit_nodes"] for r in rows],
        }


def write(out: Path, runs: list[dict], planned: int, fashion_rows: int) -> None:
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "complete": len(runs) == planned,
        "fashion_mnist_rows": fashion_rows,
        "federated_over_centralized_accuracy": {},
        "seconds_per_round": {},
        "overhead_share": {},
        "runs": runs,
    }
    for r in runs:
        for key in ("federated_over_centralized_accuracy", "seconds_per_round", "overhead_share"):
            result[key].setdefault(r["dataset"], {}).setdefault(str(r["owners"]), {})[r["scheme"]] = r[key]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "federated.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fashion-rows", type=int, default=20000,
                    help="Fashion-MNIST rows used (of 70000), to keep 10 owners on 2 cores tractable")
    ap.add_argument("--quick", action="store_true", help="digits, 3 owners, IID only")
    args = ap.parse_args()
    # Smaller federations first; the JSON is rewritten after every run, so an
    # interrupted benchmark still leaves what it measured.
    plan = [("digits", 3, "iid")] if args.quick else [
        (d, n, s) for n in (3, 10) for d in ("digits", "fashion-mnist") for s in ("iid", "dirichlet")
    ]
    runs: list[dict] = []
    for dataset, owners, scheme in plan:
        rows = args.fashion_rows if dataset == "fashion-mnist" else None
        r = one_run(dataset, owners, scheme, args.rounds, rows)
        runs.append(r)
        print(f"{dataset:14s} owners={owners:2d} {scheme:9s} federated/centralised="
              f"{r['federated_over_centralized_accuracy']:.3f} ({r['federated_accuracy']:.3f}/"
              f"{r['centralized_accuracy']:.3f})  s/round={r['seconds_per_round']:.1f}  "
              f"overhead={r['overhead_share']:.2f}", flush=True)
        write(args.out, runs, len(plan), args.fashion_rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
