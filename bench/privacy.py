"""What privacy costs: plain FedAvg against SecAgg+ and SecAgg+ with differential privacy (issue 13).

Each (dataset, owner count) is one real loopback federation (flower-superlink,
one flower-supernode per owner, TLS, SuperNode auth); the variants run on it one
after another, in the same script, so the machine's load from other jobs falls on
all of them alike:

- ``plain``: FedAvg over the Message API, one exchange per round;
- ``secagg``: Flower's SecAggPlusWorkflow / secaggplus_mod, four exchanges per round;
- ``secagg-dp-<z>``: SecAgg+ with Flower's client-side fixed-clipping DP
  (``fixedclipping_mod`` on owners, noise on the sum), noise multiplier z.

Per run: accuracy on the public test set after the last round, seconds per round
(progress.jsonl), and bytes per owner per round (the protobuf size of every message
to and from each owner, counted by the ServerApp's grid). The headline keys keep the
worst ratio over datasets and owner counts: ``secagg_over_plain_accuracy`` and
``secagg_over_plain_seconds_per_round``.

    .venv/bin/python bench/privacy.py [--quick] [--out bench/results/privacy.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.exit_status import exit_with
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.training import run_training
from fedfhe_demo.cluster import Cluster
from fedfhe_demo.partition_cli import write_partitions

SHARED_MACHINE = ("2 cores shared with other helpers' tests and benchmarks; variants of one federation run back "
                  "to back in this script, so their ratios are the figures to trust, absolute seconds vary")
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLIPPING_NORM = 1.0  # DP: each owner's update is clipped to this L2 norm (fixedclipping_mod)


def variants(noise_levels: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"plain": {"secure-aggregation": False}, "secagg": {"secure-aggregation": True}}
    for z in noise_levels:
        out[f"secagg-dp-{z:g}"] = {"secure-aggregation": True, "dp-noise-multiplier": z,
                                   "dp-clipping-norm": CLIPPING_NORM}
    return out


def federation(dataset: str, owners: int, rounds: int, max_rows: int | None, runs: dict[str, dict[str, Any]],
               round_timeout: float) -> list[dict[str, Any]]:
    """Start one federation, run every variant on it; one result per variant."""
    results = []
    with tempfile.TemporaryDirectory(prefix="fedfhe-privacy-") as tmp:
        work = Path(tmp)
        data = work / "data"
        summary = write_partitions(dataset, owners, data, scheme="iid", seed=0, max_rows=max_rows)
        names = [f"owner-{i}" for i in range(owners)]
        with Cluster(work) as c:
            c.make_pki(names)
            cfg_path = c.coordinator_config(names, rounds=rounds, min_nodes=owners, schema=dataset,
                                            public_test=str(data / "public-test.npz"), round_timeout_s=round_timeout,
                                            wait_for_nodes_s=180.0)
            c.start_superlink(cfg_path)
            c.register(cfg_path)
            for i, name in enumerate(names):
                c.start_supernode(name, c.owner_config(name, data / f"owner-{i}.npz", schema=dataset))
            cfg = coord.load(cfg_path)
            for name, overrides in runs.items():
                rows: list[dict] = []
                start = time.perf_counter()
                try:
                    artifact = run_training(cfg, overrides, on_round=rows.append)
                except Exception as exc:  # noqa: BLE001 - recorded, the other variants still run
                    results.append({"dataset": dataset, "owners": owners, "variant": name, "error": str(exc)[:500]})
                    print(f"{dataset} {owners} owners {name}: FAILED {str(exc)[:200]}", flush=True)
                    continue
                per_round = [r["seconds"] for r in rows]
                sent = [float(np.mean(list(r.get("bytes", {}).values()) or [0])) for r in rows[:-1]]
                out = {
                    "dataset": dataset, "owners": owners, "variant": name, "overrides": overrides, "rounds": rounds,
                    "rows_per_owner": [o["rows"] for o in summary["owners"]],
                    "accuracy": rows[-1]["server"]["accuracy"],
                    "accuracy_per_round": [r["server"]["accuracy"] for r in rows],
                    "seconds_per_round": float(np.mean(per_round)),
                    "seconds_each_round": per_round,
                    # The last round's bytes include the final evaluate message; rounds before it are train only.
                    "bytes_per_owner_per_round": float(np.mean(sent)) if sent else None,
                    "run_seconds_total": time.perf_counter() - start,
                    "owners_per_round": [r["fit_nodes"] for r in rows],
                    "privacy": artifact.metrics.get("privacy"),
                }
                results.append(out)
                print(f"{dataset} {owners} owners {name}: accuracy {out['accuracy']:.4f}, "
                      f"{out['seconds_per_round']:.1f} s/round, {out['bytes_per_owner_per_round']:.0f} B/owner/round",
                      flush=True)
    return results


def ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (dataset, owners): each variant over plain; the worst SecAgg+ ratios overall."""
    table: dict[str, Any] = {}
    worst_acc, worst_time = None, None
    for r in runs:
        if "error" in r or r["variant"] == "plain":
            continue
        base = next((p for p in runs if p["dataset"] == r["dataset"] and p["owners"] == r["owners"]
                     and p["variant"] == "plain" and "error" not in p), None)
        if base is None:
            continue
        key = f"{r['dataset']}/{r['owners']}"
        row = {"accuracy": r["accuracy"] / base["accuracy"],
               "seconds_per_round": r["seconds_per_round"] / base["seconds_per_round"],
               "bytes_per_owner_per_round": r["bytes_per_owner_per_round"] / base["bytes_per_owner_per_round"]}
        table.setdefault(key, {})[f"{r['variant']}_over_plain"] = row
        if r["variant"] == "secagg":
            worst_acc = row["accuracy"] if worst_acc is None else min(worst_acc, row["accuracy"])
            worst_time = row["seconds_per_round"] if worst_time is None else max(worst_time, row["seconds_per_round"])
    return {"secagg_over_plain_accuracy": worst_acc, "secagg_over_plain_seconds_per_round": worst_time,
            "over_plain": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "privacy.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--fashion-rows", type=int, default=6000, help="rows of Fashion-MNIST split among the owners")
    ap.add_argument("--quick", action="store_true", help="digits with 3 owners only")
    args = ap.parse_args()
    started = time.time()
    plans: list[tuple[str, int, dict[str, dict[str, Any]], int | None]] = [
        ("digits", 3, variants(tuple(args.noise)), None),
    ]
    cut = []
    if not args.quick:
        if FASHION.exists():
            plans.append(("fashion-mnist", 3, variants(tuple(args.noise)), args.fashion_rows))
        else:
            cut.append(f"fashion-mnist: {FASHION} is absent on this machine")
        plans.append(("digits", 10, variants(()), None))
        cut.append("digits with 10 owners: DP variants (time; DP's cost is measured at 3 owners)")
        cut.append("fashion-mnist with 10 owners (the session's time budget; digits with 10 owners shows "
                   "the owner-count effect)")
    results: list[dict[str, Any]] = []
    for i, (dataset, owners, runs, max_rows) in enumerate(plans):
        results += federation(dataset, owners, args.rounds, max_rows, runs, round_timeout=300.0)
        # Written after each federation: a run stopped later still leaves what it measured.
        left = [f"{d} with {n} owners (not reached)" for d, n, _, _ in plans[i + 1:]]
        write(args, results, cut + left, started)


def write(args: argparse.Namespace, results: list[dict[str, Any]], cut: list[str], started: float) -> None:
    out = {
        "machine": {"cpus": 2, "python": platform.python_version(), "shared": SHARED_MACHINE},
        **ratios(results),
        "goals": {"secagg_over_plain_accuracy": ">= 0.995", "secagg_over_plain_seconds_per_round": "<= 2"},
        "dp": {"clipping_norm": CLIPPING_NORM, "noise_multipliers": args.noise,
               "how_to_read": "noise stddev added to each coordinate of the averaged model per round = "
                              "noise_multiplier * clipping_norm / owners (Flower's compute_stdv); no epsilon: "
                              "Flower's RdpAccountant needs the dp-accounting package, not installed here"},
        "fashion_mnist_rows": args.fashion_rows if FASHION.exists() else None,
        "cut": cut,
        "seconds_total": time.time() - started,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("secagg_over_plain_accuracy", "secagg_over_plain_seconds_per_round")}),
          flush=True)


if __name__ == "__main__":
    exit_with(main)
