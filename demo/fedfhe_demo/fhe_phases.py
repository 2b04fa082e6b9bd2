"""Demo phases after training: compile to FHE, serve with mutual TLS, predict on encrypted rows.

Each owner encrypts the rows it held back from training (the same seeded
split its ClientApp used), so no row is scored that trained the model.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.bundle import FILES
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.scoring import mean_abs_error, prediction_score
from fedfhe_common.pki.release import load_signing_key
from fedfhe_common.runtime.procs import venv_bin
from fedfhe_coordinator.fhe.compile import compile_artifact
from fedfhe_owner import config as owner_config
from fedfhe_owner.clientapp.holdout import split_holdout
from fedfhe_owner.predict.encrypted import predict_rows
from fedfhe_testbed.cluster import Cluster, inference_config
from fedfhe_testbed.datasets import demo_schema

from .steps import Options, Steps


def heldout_rows(owner_cfg: Path, schema: Any) -> tuple[np.ndarray, np.ndarray]:
    """The rows this owner's ClientApp kept back: same file, fraction and seed, same rule."""
    cfg = owner_config.load(owner_cfg)
    X, y = load_table(cfg.data, schema, cfg.labels)
    _, X_held, _, y_held = split_holdout(X, y, cfg.holdout_fraction, cfg.seed)
    return X_held, y_held


def run_fhe_phases(
    opts: Options, work: Path, steps: Steps, console: Console, cluster: Cluster,
    owners: list[str], owner_cfgs: dict[str, Path], report: dict[str, Any], public_test: Path,
) -> None:
    schema = demo_schema(opts.dataset)
    metric = report["metric"]
    public = load_table(public_test, schema)
    artifact = work / "training" / "artifact"
    prep = TrainingArtifact.load(artifact).prep  # the transform owners apply before encrypting
    with steps("compile"):
        n_bits: int | str | None = (None if opts.n_bits == "default" else
                                    opts.n_bits if opts.n_bits == "auto" else int(opts.n_bits))
        bundle, fhe_model = compile_artifact(
            artifact, work / "bundle", n_bits=n_bits, model_id=f"{opts.dataset}-{opts.model.lower()}",
            version="demo", eval_set=public, force=True,
            signing_key=load_signing_key(cluster.pki / "release.key"),
        )
        report["n_bits"] = n_bits = bundle.meta["n_bits"]
        sizes = ", ".join(f"{name} {(bundle.directory / name).stat().st_size:,} B" for name in FILES)
        console.print(f"bundle {bundle.directory}: {sizes}, n_bits={n_bits}")
    with steps("inference", cluster.logs / "inference.log"):
        cfg_path = inference_config(cluster, work)
        res = _run([venv_bin("fedfhe-inference"), "publish", "--config", str(cfg_path), str(bundle.directory)])
        console.print(res.strip())
        node = cluster.start_inference(cfg_path, owners[0])
        X_all, y_all, pred_all, sim_all = [], [], [], []
        totals = {"rows": 0, "e2e": 0.0, "server": 0.0, "keys": 0, "ct": 0, "res": 0}
        for owner in owners:
            X, y = heldout_rows(owner_cfgs[owner], schema)
            y = schema.decode_labels(y) if schema.is_classifier else y  # predictions come as declared classes
            result = predict_rows(node.endpoint(owner), work / owner / "fhe", X, progress=True)
            X = prep.transform(X)
            X_all.append(X)
            y_all.append(y)
            pred_all.append(result.predictions)
            sim_all.append(_decoded(schema, fhe_model.predict(X, fhe="simulate")))
            totals["rows"] += result.rows
            totals["e2e"] += result.latency_per_row_s * result.rows
            totals["server"] += result.seconds.get("server", 0.0)
            totals["keys"] = max(totals["keys"], result.bytes.get("evaluation_keys", 0))
            totals["ct"] += result.bytes.get("ciphertexts", 0)
            totals["res"] += result.bytes.get("results", 0)
            console.print(f"{owner}: {result.rows} encrypted rows, {metric} "
                          f"{prediction_score(result.predictions, y, schema):.4f}, "
                          f"{1000 * result.latency_per_row_s:.1f} ms/row")
    y = np.concatenate(y_all)
    enc = np.concatenate(pred_all)
    sim = np.concatenate(sim_all)
    clear = _decoded(schema, fhe_model.predict(np.vstack(X_all), fhe="disable"))
    rows = max(1, totals["rows"])
    scored = {
        "fhe_simulated": sim,
        "fhe_encrypted": enc,
        "federated_clear_heldout": _decoded(schema, _clear_predictions(work, np.vstack(X_all))),
        "fhe_quantized_clear": clear,
    }
    report["accuracy"].update({k: prediction_score(v, y, schema) for k, v in scored.items()})
    if schema.is_classifier:
        report["encrypted_equals_simulated"] = bool(np.array_equal(enc, sim))
    else:
        # A regressor's decrypted value and the simulation agree to within the output quantisation step.
        step = float(fhe_model.output_quantizers[0].scale)
        gap = float(np.max(np.abs(np.ravel(enc) - np.ravel(sim)))) if len(y) else 0.0
        report["quantization_step"], report["encrypted_vs_simulated_max_abs"] = step, gap
        report["encrypted_equals_simulated"] = gap <= step + 1e-9
        report["mae"].update({k: mean_abs_error(v, y) for k, v in scored.items()})
    report["heldout_rows"] = int(rows)
    report["latency_ms_per_row"] = {
        "encrypted_end_to_end": 1000 * totals["e2e"] / rows,
        "server_run": 1000 * totals["server"] / rows,
    }
    report["bytes"] = {
        "evaluation_keys": int(totals["keys"]),
        "ciphertext_per_row": int(totals["ct"] // rows),
        "result_per_row": int(totals["res"] // rows),
    }
    report["bundle"] = {"path": str(bundle.directory), "model_id": bundle.model_id, "version": bundle.version,
                        "sha256": bundle.bundle_sha256, "sizes": sizes}


def _decoded(schema: Any, predictions: Any) -> np.ndarray:
    """Model labels as the schema declares its classes (what encrypted predictions decrypt to)."""
    predictions = np.asarray(predictions)
    return schema.decode_labels(predictions) if schema.is_classifier else predictions


def _clear_predictions(work: Path, X: np.ndarray) -> np.ndarray:
    return TrainingArtifact.load(work / "training" / "artifact").to_estimator().predict(X)


def _run(argv: list[str]) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout
