"""fedfhe-server subcommands for the FHE side: compile, choose-n-bits, train-local.

``register(sub)`` adds them to the coordinator's argparse tree; each handler
returns an exit code and raises FedfheError for a one-line operator message.
Concrete ML is imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.errors import ConfigError
from fedfhe_common.schema import DatasetSchema


def _load_eval(path: Path | None, labels: Path | None, schema: DatasetSchema) -> tuple[np.ndarray, np.ndarray] | None:
    if path is None:
        return None
    from fedfhe_common.data import load_table

    return load_table(path, schema, labels)


def _n_bits(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an integer or 'auto'") from None
    if not 1 <= n <= 16:
        raise argparse.ArgumentTypeError(f"{n}: n_bits must be between 1 and 16")
    return n


def _json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"C\": 0.5}'")
    return data


def _progress(cmd: str) -> Callable[[str], None]:
    """Timestamped progress lines on stderr: compiling and choosing n_bits take up to minutes."""
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"fedfhe-server {cmd}: [{time.monotonic() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    return say


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _compile(args: argparse.Namespace) -> int:
    from fedfhe_common.artifact import TrainingArtifact
    from fedfhe_common.release import load_signing_key

    from .compile import compile_artifact

    key = load_signing_key(args.release_key)
    # Signature and manifest are checked before anything heavy (the --eval file, Concrete ML).
    artifact = TrainingArtifact.load(args.artifact, key.public_key())
    eval_set = _load_eval(args.eval, args.eval_labels, artifact.schema)
    if args.n_bits == "auto" and eval_set is None:
        raise ConfigError("--n-bits auto needs --eval FILE (public rows to measure accuracy on)")
    result, _ = compile_artifact(
        artifact, args.out, signing_key=key, n_bits=args.n_bits, tolerance_points=args.tolerance,
        model_id=args.model_id, version=args.version, eval_set=eval_set, calibration_rows=args.calibration_rows,
        seed=args.seed, force=args.force, progress=_progress("compile"),
    )
    n_bits = result.meta["n_bits"]
    if "n_bits_choice" in result.meta:
        print(f"chose n_bits={n_bits}")
    print(f"bundle: {result.directory} (model {result.model_id} version {result.version}, n_bits {n_bits})")
    print(f"bundle sha256: {result.bundle_sha256}")
    metrics = result.meta.get("metrics")
    if metrics:
        m = metrics["metric"]
        print(f"{m} on {metrics['eval_rows']} public rows: clear {_fmt(metrics[f'clear_{m}'])}, "
              f"simulated FHE {_fmt(metrics[f'fhe_simulated_{m}'])}")
    return 0


def _choose(args: argparse.Namespace) -> int:
    from fedfhe_common.artifact import TrainingArtifact

    from .nbits import choose_n_bits

    if args.min_bits > args.max_bits:
        raise ConfigError(f"--min {args.min_bits} is above --max {args.max_bits}")
    artifact = TrainingArtifact.load(args.artifact)
    eval_set = _load_eval(args.eval, args.eval_labels, artifact.schema)
    assert eval_set is not None
    say = _progress("choose-n-bits")
    say(f"{artifact.family}: one circuit per n_bits in {args.min_bits}..{args.max_bits}, simulated on "
        f"{len(eval_set[1])} rows")
    choice = choose_n_bits(
        artifact.to_estimator(), artifact.family, artifact.schema, *eval_set,
        candidates=range(args.min_bits, args.max_bits + 1), tolerance_points=args.tolerance,
        on_trial=lambda t: say(f"n_bits {t.n_bits}: simulated {_fmt(t.simulated)} ({t.seconds:.1f} s)"),
    )
    print(f"clear {choice.metric}: {_fmt(choice.clear)}")
    for t in choice.trials:
        print(f"  n_bits {t.n_bits:2d}: simulated {_fmt(t.simulated)} ({t.seconds:.1f}s)")
    if args.json:
        args.json.write_text(json.dumps(choice.to_dict(), indent=2) + "\n")
    if choice.chosen is None:
        raise ConfigError(f"no n_bits in {args.min_bits}..{args.max_bits} keeps simulated {choice.metric} "
                          f"within {args.tolerance} points of clear")
    print(f"chosen n_bits: {choice.chosen}")
    return 0


def _train_local(args: argparse.Namespace) -> int:
    from fedfhe_common.release import load_signing_key
    from fedfhe_common.schema import resolve_schema

    from .local_training import train_local_file

    key = load_signing_key(args.release_key)
    schema = resolve_schema(args.schema)
    eval_set = _load_eval(args.eval, args.eval_labels, schema)
    artifact = train_local_file(
        args.data, schema, args.model, args.out, labels=args.labels, model_params=args.model_params,
        epochs=args.epochs, eval_set=eval_set, signing_key=key,
    )
    train = artifact.metrics["train"]
    key = "accuracy" if "accuracy" in train else "r2"
    line = f"artifact: {args.out} ({artifact.family}, {artifact.metrics['rows']} rows, train {key} {train[key]:.4f}"
    if "eval" in artifact.metrics:
        line += f", eval {key} {artifact.metrics['eval'][key]:.4f}"
    print(line + ")")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add compile, choose-n-bits and train-local to fedfhe-server's subcommands."""
    p = sub.add_parser("compile", help="compile a training artifact into an FHE deployment bundle")
    p.add_argument("--artifact", type=Path, required=True, help="training artifact directory")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--n-bits", type=_n_bits, default=8, help="quantisation bits, or 'auto' (needs --eval)")
    p.add_argument("--model-id", help="model id served by the inference node (default: <schema>-<family>)")
    p.add_argument("--version", help="model version (default: UTC timestamp)")
    p.add_argument("--eval", type=Path, help="public evaluation file (CSV/NPZ/IDX) to measure accuracy on")
    p.add_argument("--eval-labels", type=Path, help="labels file for an IDX --eval")
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy points allowed for --n-bits auto")
    p.add_argument("--calibration-rows", type=int, default=200, help="uniform rows drawn from the schema bounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--release-key", type=Path, required=True,
                   help="release signing key (release.key): verifies the artifact, signs the bundle")
    p.set_defaults(fn=_compile)

    p = sub.add_parser("choose-n-bits", help="smallest n_bits whose simulated accuracy is within tolerance")
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True, help="public evaluation file")
    p.add_argument("--eval-labels", type=Path)
    p.add_argument("--min", dest="min_bits", type=int, default=2)
    p.add_argument("--max", dest="max_bits", type=int, default=12)
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy points (default 0.5)")
    p.add_argument("--json", type=Path, help="also write the trials as JSON here")
    p.set_defaults(fn=_choose)

    p = sub.add_parser("train-local", help="train on one local file and write a training artifact (origin=local)")
    p.add_argument("--data", type=Path, required=True, help="CSV with a label column, NPZ (X, y) or IDX images")
    p.add_argument("--labels", type=Path, help="labels file for IDX images")
    p.add_argument("--schema", default="digits", help="built-in schema name or schema YAML file")
    p.add_argument("--model", default="LogisticRegression", help="model family (see fedfhe_common.models)")
    p.add_argument("--model-params", type=_json_object, default={}, help="JSON object of estimator parameters")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval", type=Path, help="public evaluation file")
    p.add_argument("--eval-labels", type=Path)
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--release-key", type=Path, required=True, help="release signing key (release.key)")
    p.set_defaults(fn=_train_local)
