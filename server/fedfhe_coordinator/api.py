"""The coordinator's release step as a Python call: what ``fedfhe-coordinator compile`` does, without a shell.

    from fedfhe_coordinator.api import compile_bundle

    result = compile_bundle("training/artifact", "bundles/digits-lr-2", model_id="digits-lr", model_version="2",
                            release_key="pki/release.key", eval_set="public-test.npz")
    print(result.directory, result.bundle_sha256)

A release pipeline (a CI job, a notebook) gets a typed :class:`BundleResult` instead of parsing
``--format json``. The checks are the CLI's, in its order: the output directory before the release
key's passphrase, the artifact's signature and manifest before anything heavy, then Concrete ML.
Publishing the bundle on the inference node is ``fedfhe_inference.api.publish`` (it runs there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.data import load_table
from fedfhe_common.pki.release import load_signing_key
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.fhe.compile import BundleResult, check_out, compile_artifact
from fedfhe_coordinator.fhe.concrete_model import CALIBRATION_ROWS

__all__ = ["BundleResult", "compile_bundle", "load_eval_rows"]

EvalRows = tuple[np.ndarray, np.ndarray]


def load_eval_rows(path: Path | None, labels: Path | None, schema: DatasetSchema) -> EvalRows | None:
    """Public evaluation rows (CSV, NPZ, or IDX with ``labels``) read against ``schema``; None without a file."""
    if path is None:
        return None

    return load_table(path, schema, labels)


def compile_bundle(
    artifact_dir: str | Path,
    out_dir: str | Path,
    *,
    model_id: str | None,
    model_version: str | None,
    release_key: str | Path | Ed25519PrivateKey,
    n_bits: int | str | None = None,
    eval_set: str | Path | EvalRows | None = None,
    eval_labels: str | Path | None = None,
    tolerance_points: float = 0.5,
    calibration_rows: int = CALIBRATION_ROWS,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BundleResult:
    """Compile the signed training artifact in ``artifact_dir`` into a signed FHE bundle in ``out_dir``.

    ``model_id`` None: ``<schema>-<family>``; ``model_version`` None: a UTC timestamp (the CLI's
    defaults, named here so a caller decides). ``release_key``: release.key (its passphrase from
    $FEDFHE_RELEASE_PASSPHRASE when encrypted) or the loaded key; it verifies the artifact and signs
    the bundle. ``n_bits``: an integer, "auto" (needs ``eval_set``) or None for the family's default.
    ``eval_set``: public rows, a file (``eval_labels`` for IDX) or ``(X, y)``, scored clear and in
    simulated FHE into the manifest. Errors are ``FedfheError`` subclasses with one-line messages.
    """
    out = Path(out_dir)
    check_out(out, force)  # before the release key's passphrase prompt and the artifact's check
    key = release_key if isinstance(release_key, Ed25519PrivateKey) else load_signing_key(Path(release_key))
    # Signature and manifest are checked before anything heavy (the evaluation file, Concrete ML).
    artifact = TrainingArtifact.load(Path(artifact_dir), key.public_key())
    if isinstance(eval_set, tuple):
        if eval_labels is not None:
            raise ConfigError("eval_labels names the labels of an IDX eval_set file; these rows came as (X, y)")
        rows: EvalRows | None = eval_set
    else:
        rows = load_eval_rows(None if eval_set is None else Path(eval_set),
                              None if eval_labels is None else Path(eval_labels), artifact.schema)
    if n_bits == "auto" and rows is None:
        raise ConfigError("--n-bits auto needs --eval FILE (eval_set in Python): public rows to measure accuracy on")
    result, _ = compile_artifact(
        artifact, out, signing_key=key, n_bits=n_bits, tolerance_points=tolerance_points, model_id=model_id,
        version=model_version, eval_set=rows, calibration_rows=calibration_rows, seed=seed, force=force,
        progress=progress,
    )
    return result
