"""Turn a training artifact (or any Concrete ML model) into a verified FHE deployment bundle.

The calibration set comes from the schema's declared bounds, never from an
owner's rows. Concrete ML is imported lazily: it costs seconds, and only this
step needs it on the coordinator.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfhe_common.contracts import bundle, key_params
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.manifest import MANIFEST, sha256_file
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import fedxgb, models
from fedfhe_common.ml.scoring import prediction_score
from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_coordinator.fhe.concrete_model import CALIBRATION_ROWS, calibration_set, to_concrete
from fedfhe_coordinator.fhe.nbits import resolve_n_bits

# --n-bits auto for trees stops here: a tree's lookup tables, hence its evaluation keys, grow with n_bits
# (depth-3 regressor on diabetes: 38 MB of keys at 4 bits, 59 MB at 6).
TREE_AUTO_MAX_N_BITS = fedxgb.MAX_N_BITS


@dataclass(frozen=True)
class BundleResult:
    """What compile produced: where, which model version, and its fingerprint."""

    directory: Path
    model_id: str
    version: str
    bundle_sha256: str
    meta: dict[str, Any]


def evaluate(clear_model: Any, fhe_model: Any, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> dict[str, Any]:
    """Clear and simulated-FHE quality on a public evaluation set (simulation is exact for the circuit)."""
    metric = "accuracy" if schema.is_classifier else "r2"
    started = time.perf_counter()
    simulated = fhe_model.predict(X, fhe="simulate")
    return {
        "metric": metric,
        "eval_rows": len(y),
        f"clear_{metric}": prediction_score(clear_model.predict(X), y, schema),
        f"fhe_simulated_{metric}": prediction_score(simulated, y, schema),
        "simulate_seconds_per_row": (time.perf_counter() - started) / max(1, len(y)),
    }


def default_version() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")


def write_bundle(
    fhe_model: Any,
    out_dir: Path,
    *,
    model_id: str,
    version: str,
    schema: DatasetSchema,
    family: str,
    n_bits: Any,
    signing_key: Ed25519PrivateKey,
    extra_meta: dict[str, Any] | None = None,
    force: bool = False,
) -> BundleResult:
    """FHEModelDev, content check, manifest, release signature, one rename (``fedfhe_common.contracts.bundle``)."""
    from concrete.ml.deployment import FHEModelDev  # lazy: concrete-ml takes seconds to import
    from concrete.ml.version import __version__ as cml_version  # lazy: concrete-ml takes seconds to import

    def produce(tmp: Path) -> None:
        FHEModelDev(str(tmp / "fhe"), fhe_model).save()
        for name in bundle.FILES:
            (tmp / "fhe" / name).rename(tmp / name)
        (tmp / "fhe").rmdir()

    meta = {
        "model_id": bundle.check_name(model_id, "model id"),
        "version": bundle.check_name(version, "version"),
        "family": family,
        "model_class": type(fhe_model).__name__,
        "n_bits": n_bits if isinstance(n_bits, int) else json.loads(json.dumps(n_bits, default=str)),
        "schema": schema.to_dict(),
        "concrete_ml": cml_version,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra_meta or {}),
    }
    out_dir = bundle.write(Path(out_dir), produce, meta, signing_key, force=force)
    signed = json.loads((out_dir / MANIFEST).read_bytes())  # bundle.write adds the key-parameter fingerprint
    meta[key_params.FIELD] = signed[key_params.FIELD]
    return BundleResult(out_dir, model_id, version, sha256_file(out_dir / MANIFEST), meta)


def compile_concrete_bundle(
    fhe_model: Any,
    out_dir: Path,
    *,
    model_id: str,
    version: str,
    schema: DatasetSchema,
    calibration: np.ndarray | None = None,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    signing_key: Ed25519PrivateKey,
    extra_meta: dict[str, Any] | None = None,
    force: bool = False,
) -> BundleResult:
    """Bundle any fitted Concrete ML model (linear, tree, neural): the service serves them all.

    The model is compiled on ``calibration`` (default: ``calibration_set`` from the schema)
    unless it already holds a circuit.
    """
    if getattr(fhe_model, "fhe_circuit", None) is None:
        if calibration is None:
            calibration = calibration_set(schema, getattr(fhe_model, "sklearn_model", None))
        fhe_model.compile(calibration)
    meta = dict(extra_meta or {})
    if eval_set is not None:
        clear = getattr(fhe_model, "sklearn_model", None)
        clear = fhe_model if clear is None else clear
        meta["metrics"] = evaluate(clear, fhe_model, *eval_set, schema)
    n_bits = getattr(fhe_model, "n_bits", None)
    return write_bundle(
        fhe_model, out_dir, model_id=model_id, version=version, schema=schema,
        family=type(fhe_model).__name__, n_bits=n_bits, signing_key=signing_key, extra_meta=meta, force=force,
    )


def check_out(out_dir: Path, force: bool) -> None:
    """Refuse an existing bundle directory up front: compiling takes minutes, and refusing after it wastes them."""
    if Path(out_dir).exists() and not force:
        raise FedfheError(f"{out_dir}: already exists; choose another --out or pass --force")


def budget_n_bits(artifact: TrainingArtifact) -> int:
    """The largest n_bits a federated booster's run allows (training.xgboost_budget, signed in its metrics); 0: none."""
    budget = artifact.metrics.get("xgboost_budget")
    cap = budget.get("max_n_bits", 0) if isinstance(budget, dict) else 0
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and 2 <= cap <= TREE_AUTO_MAX_N_BITS else 0


def compile_artifact(
    artifact: Path | TrainingArtifact,
    out_dir: Path,
    *,
    signing_key: Ed25519PrivateKey,
    n_bits: int | str | None = None,
    tolerance_points: float = 0.5,
    model_id: str | None = None,
    version: str | None = None,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_rows: int = CALIBRATION_ROWS,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[BundleResult, Any]:
    """Training artifact -> scikit-learn -> Concrete ML -> bundle; also returns the compiled model.

    ``eval_set`` (public rows, never an owner's) adds measured clear and
    simulated-FHE accuracy to the manifest; ``n_bits="auto"`` chooses on it
    (``nbits.resolve_n_bits``) with the same calibration rows, from the one read
    of the artifact; for a tree family among 2..TREE_AUTO_MAX_N_BITS only. ``None``:
    compile's default (models.default_n_bits: 10 for a linear model on a typed schema, 8 on the pixel
    schemas, 6 for trees). The artifact must carry the release key's signature
    (``train`` / ``train-local`` sign it): a folder is loaded and verified here, a
    TrainingArtifact must come from ``TrainingArtifact.load`` with that key. The
    bundle is signed too.
    """
    check_out(out_dir, force)  # before minutes of compiling, not after (bundle.write checks again)
    if not isinstance(artifact, TrainingArtifact):
        artifact = TrainingArtifact.load(Path(artifact), signing_key.public_key())
    schema = artifact.schema
    prep = artifact.prep
    estimator = artifact.to_estimator()
    calibration = calibration_set(schema, estimator, calibration_rows, seed, prep)
    if eval_set is not None:  # loaded rows, transformed exactly as the owners will before encrypting
        eval_set = (prep.transform(eval_set[0], "evaluation rows"), eval_set[1])
    say = progress or (lambda line: None)

    def trial(t: Any) -> None:
        say(f"n_bits {t.n_bits}: simulated {t.simulated:.4f} ({t.seconds:.1f} s)")

    if n_bits == "auto":
        say(f"choosing n_bits on {len(eval_set[1]) if eval_set else 0} public rows (one circuit per candidate)")
    cap = budget_n_bits(artifact)
    if n_bits is None:
        n_bits = min(models.default_n_bits(artifact.family, schema), cap or 99)
    if cap and isinstance(n_bits, int) and n_bits > cap:
        raise ConfigError(f"n_bits {n_bits} is above the run's training.xgboost_budget.max_n_bits {cap}, signed "
                          "into the training artifact (a tree's latency and keys grow with n_bits)")
    candidates = range(2, (cap or TREE_AUTO_MAX_N_BITS) + 1) if models.is_tree(artifact.family) else None
    n_bits, choice = resolve_n_bits(n_bits, estimator, artifact.family, schema, eval_set,
                                    tolerance_points=tolerance_points, calibration_set=calibration, on_trial=trial,
                                    candidates=candidates)
    say(f"compiling {artifact.family} to FHE with n_bits {n_bits} on {len(calibration)} calibration rows")
    started = time.perf_counter()
    fhe_model = to_concrete(estimator, artifact.family, calibration, n_bits)
    compile_seconds = time.perf_counter() - started
    meta: dict[str, Any] = {
        "source": {
            "kind": "training-artifact",
            "origin": artifact.origin,
            "artifact_manifest_sha256": artifact.manifest_sha256,
            "rounds": artifact.metrics.get("rounds"),
        },
        "calibration": {"rows": int(len(calibration)), "uniform_rows": calibration_rows, "seed": seed,
                        "from": "schema bounds: uniform rows plus the bounds-box corners extreme for each output"
                        if artifact.tree is None else "schema bounds: uniform rows plus the all-min and all-max rows"},
        "compile_seconds": compile_seconds,
    }
    if artifact.tree is not None:
        meta["tree"] = artifact.metrics.get("tree")
    if schema.typed:  # signed with the manifest: owners transform rows with exactly this before encrypting
        meta["preprocessing"] = prep.to_dict()
        meta["calibration"]["from"] = "schema bounds per column after the preprocessing: uniform rows plus corners"
    if choice is not None:
        meta["n_bits_choice"] = choice.to_dict()
    if eval_set is not None:
        say(f"compiled in {compile_seconds:.1f} s; simulating FHE on {len(eval_set[1])} public rows")
        meta["metrics"] = evaluate(estimator, fhe_model, *eval_set, schema)
    say("writing, checking and signing the bundle")
    result = write_bundle(
        fhe_model, out_dir,
        model_id=model_id or f"{schema.name}-{artifact.family.lower()}",
        version=version or default_version(),
        schema=schema, family=artifact.family, n_bits=n_bits, signing_key=signing_key, extra_meta=meta, force=force,
    )
    return result, fhe_model
