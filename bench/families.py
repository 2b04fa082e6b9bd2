"""Every model family end to end: clear quality, encrypted quality, latency, key size and compile time.

One row per family, on digits (classifiers) and scikit-learn's bundled diabetes data
(regressors), each through the product's own path: ``train_local`` (the linear
families are trained centrally here, on the bench's training split, not federated),
a signed training artifact written and read back, ``compile_artifact`` (calibration
from the schema's bounds, each family's default n_bits), then the bundle's
``client.zip`` / ``server.zip`` through Concrete ML's FHEModelClient (key generation,
encryption, decryption) and FHEModelServer (the encrypted run) in this process.

- ``clear``, ``fhe_simulated``: the metric (accuracy, or R² for regressors) on the
  whole test split; ``fhe_encrypted``: on its first ``encrypted_rows`` rows (40 for a
  linear family; for a tree at most 3, within a minute after the first row), with
  ``clear_on_encrypted_rows`` beside it, and whether every decrypted prediction
  equals Concrete's simulated one.
- ``latency_ms_per_row``: median over those rows of encrypt + server run + decrypt
  (no network; bench/inference.py measures the service). ``latency_ratio_to_baseline``
  divides by LogisticRegression's, measured in the same run, so load from other jobs
  on the shared machine cancels out as far as it can.
- ``key_bytes``: the serialised evaluation keys an owner uploads once.

    .venv/bin/python bench/families.py [--only Ridge,XGBRegressor] [--out bench/results/families.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.ml import models
from fedfhe_common.ml.scoring import mean_abs_error, prediction_score
from fedfhe_common.pki.release import load_signing_key, make_release_key
from fedfhe_common.runtime.exit_status import exit_with
from fedfhe_coordinator.fhe.compile import compile_artifact
from fedfhe_coordinator.fhe.local_training import train_local
from fedfhe_owner.predict.decode import decides_on_raw_scores, decode, decrypt
from fedfhe_testbed.datasets import load_builtin

BASELINE = "LogisticRegression"
DATASETS = {"digits": models.CLASSIFIERS + models.TREE_CLASSIFIERS,
            "diabetes": models.REGRESSORS + models.TREE_REGRESSORS}
TEST_FRACTION = 0.2
ROWS = {"linear": 40, "tree": 3}  # encrypted rows per family at most: a tree row costs seconds
ROW_BUDGET_S = 60.0  # then stop encrypting (after at least one row): a 200-tree XGBClassifier row takes ~90 s


def split(name: str) -> tuple[Any, ...]:
    X, y, schema = load_builtin(name)
    order = np.random.default_rng(0).permutation(len(y))
    n_test = int(len(y) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test], schema


def owner_prediction(client: Any, encrypted_result: bytes, schema: Any) -> Any:
    """What the owner's client reads from a decrypted result (fedfhe_owner.predict.decode): a class or a value."""
    d = decrypt(client, encrypted_result)
    return decode(d.raw, d.outputs, schema, decides_on_raw_scores(client.model))[0][0]


def time_encrypted_rows(client: Any, server: Any, evaluation_keys: bytes, X: np.ndarray, schema: Any
                        ) -> tuple[list[Any], list[float], list[float]]:
    """Rows of ``X`` one at a time: encrypted, run by FHEModelServer, decrypted and decoded as the owner's client
    does, until ROW_BUDGET_S after the first; (predictions, seconds per row, server-run seconds per row)."""
    predictions: list[Any] = []
    latencies: list[float] = []
    server_runs: list[float] = []
    budget_end = time.perf_counter() + ROW_BUDGET_S
    for i in range(len(X)):
        if i and time.perf_counter() > budget_end:
            break
        t = time.perf_counter()
        ciphertext = client.quantize_encrypt_serialize(X[i:i + 1])
        s = time.perf_counter()
        result = server.run(ciphertext, evaluation_keys)
        server_runs.append(time.perf_counter() - s)
        predictions.append(owner_prediction(client, result, schema))
        latencies.append(time.perf_counter() - t)
    return predictions, latencies, server_runs


def finite(value: float) -> float | None:
    """R² of one row is undefined (NaN): JSON gets null instead."""
    return value if np.isfinite(value) else None


def run_family(family: str, data: tuple[Any, ...], work: Path, key: Any, rows: int) -> dict[str, Any]:
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    X_train, y_train, X_test, y_test, schema = data
    say = lambda line: print(f"[{family}] {line}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    artifact = train_local(X_train, y_train, schema, family)
    artifact.save(work / "artifact", key)
    artifact = TrainingArtifact.load(work / "artifact", key.public_key())
    say(f"trained in {time.perf_counter() - started:.1f} s; compiling")
    result, fhe_model = compile_artifact(artifact, work / "bundle", signing_key=key, eval_set=(X_test, y_test),
                                         model_id="bench", version="1")
    metrics = result.meta["metrics"]
    metric = metrics["metric"]
    client = FHEModelClient(str(work / "bundle"), str(work / "keys"))
    t = time.perf_counter()
    client.generate_private_and_evaluation_keys()
    keygen_seconds = time.perf_counter() - t
    evaluation_keys = client.get_serialized_evaluation_keys()
    server = FHEModelServer(str(work / "bundle"))
    server.load()
    say(f"keys {len(evaluation_keys) / 1e6:.1f} MB in {keygen_seconds:.1f} s; {rows} encrypted rows")
    X_rows, y_rows = X_test[:rows], y_test[:rows]
    predictions, latencies, server_runs = time_encrypted_rows(client, server, evaluation_keys, X_rows, schema)
    if len(predictions) < rows:
        rows, X_rows, y_rows = len(predictions), X_rows[:len(predictions)], y_rows[:len(predictions)]
        say(f"time budget spent: {rows} encrypted rows")
    encrypted = np.asarray(predictions)
    simulated = np.asarray(fhe_model.predict(X_rows, fhe="simulate")).reshape(rows, -1)[:, 0]
    clear_rows = artifact.to_estimator().predict(X_rows)
    if schema.is_classifier:
        same = bool(np.array_equal(encrypted, simulated))
    else:
        same = bool(np.allclose(encrypted, simulated, rtol=0, atol=1e-6 * float(np.ptp(y_train))))
    row: dict[str, Any] = {
        "family": family,
        "task": schema.task,
        "dataset": schema.name,
        "metric": metric,
        "clear": metrics[f"clear_{metric}"],
        "fhe_simulated": metrics[f"fhe_simulated_{metric}"],
        "fhe_encrypted": finite(prediction_score(encrypted, y_rows, schema)),
        "clear_on_encrypted_rows": finite(prediction_score(clear_rows, y_rows, schema)),
        "encrypted_rows": rows,
        "evaluated_rows": metrics["eval_rows"],
        "encrypted_equals_simulated": same,
        "latency_ms_per_row": 1000 * statistics.median(latencies),
        "server_run_ms_per_row": 1000 * statistics.median(server_runs),
        "key_bytes": len(evaluation_keys),
        "keygen_seconds": keygen_seconds,
        "compile_seconds": result.meta["compile_seconds"],
        "n_bits": result.meta["n_bits"],
        "training": "local (train_local)" if models.is_tree(family) else "centralised for the bench (train_local, "
                    "10 warm-started fits); `make demo` trains these federated",
        "model_params": {**models.default_params(family), **artifact.model_params},
    }
    if not schema.is_classifier:
        row["mae_encrypted"] = mean_abs_error(encrypted, y_rows)
    if artifact.tree is not None:
        row["tree"] = artifact.metrics.get("tree")
    say(f"{metric}: clear {row['clear']:.4f}, simulated {row['fhe_simulated']:.4f}, "
        f"encrypted {row['fhe_encrypted']} on {rows} rows; {row['latency_ms_per_row']:.1f} ms/row")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated families (default: all)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "families.json")
    args = ap.parse_args(argv)
    only = {f for f in args.only.split(",") if f}
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedfhe-families-") as tmp:
        work = Path(tmp)
        make_release_key(work)
        key = load_signing_key(work / "release.key")
        for dataset, families in DATASETS.items():
            data = split(dataset)
            for family in families:
                if only and family not in only and family != BASELINE:
                    continue
                n = ROWS["tree" if models.is_tree(family) else "linear"]
                rows.append(run_family(family, data, work / family, key, n))
    base = next((r["latency_ms_per_row"] for r in rows if r["family"] == BASELINE), None)
    for r in rows:
        r["latency_ratio_to_baseline"] = r["latency_ms_per_row"] / base if base else None
    from concrete.ml.version import __version__ as cml_version

    doc = {
        "rows": rows,
        "baseline": BASELINE,
        "notes": [
            "linear families are trained centrally for this bench (train_local on the training split); "
            "tree families train only on the local path (FedAvg averages linear parameters only)",
            f"clear and fhe_simulated: on the whole test split ({int(100 * TEST_FRACTION)} % of the rows, "
            "seed 0); fhe_encrypted: on its first encrypted_rows rows (R² on a few rows is noisy: "
            "compare it with clear_on_encrypted_rows)",
            "latency_ms_per_row: median of encrypt + FHEModelServer.run + decrypt in one process, no network",
            "the machine (2 cores) was shared with other jobs: compare latency_ratio_to_baseline, not milliseconds",
        ],
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "concrete_ml": cml_version,
                    "platform": platform.platform(), "shared": True},
        "command": "python bench/families.py" + (f" --only {args.only}" if args.only else ""),
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'family':24s} {'metric':8s} {'clear':>7s} {'encr.':>7s} {'ms/row':>9s} {'keys MB':>8s} {'compile s':>9s}")
    for r in rows:
        encrypted = float("nan") if r["fhe_encrypted"] is None else r["fhe_encrypted"]
        print(f"{r['family']:24s} {r['metric']:8s} {r['clear']:7.3f} {encrypted:7.3f} "
              f"{r['latency_ms_per_row']:9.1f} {r['key_bytes'] / 1e6:8.2f} {r['compile_seconds']:9.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    exit_with(main)
