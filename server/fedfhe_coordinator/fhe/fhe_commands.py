"""fedfhe-coordinator subcommands for the FHE side: compile, choose-n-bits, train-local.

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

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.ml import models
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.pki.release import load_signing_key
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.output import add_format, print_json, wants_json
from fedfhe_coordinator import api
from fedfhe_coordinator.fhe.concrete_model import calibration_set
from fedfhe_coordinator.fhe.local_training import train_local_file
from fedfhe_coordinator.fhe.nbits import choose_n_bits
from fedfhe_coordinator.fhe.tune import tune


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
        print(f"fedfhe-coordinator {cmd}: [{time.monotonic() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    return say


def _fmt(value: float | None, metric: str = "accuracy") -> str:
    """An accuracy as a percentage; R² as the number it is (it can be negative and is no share)."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def _compile(args: argparse.Namespace) -> int:
    result = api.compile_bundle(
        args.artifact, args.out, model_id=args.model_id, model_version=args.model_version,
        release_key=args.release_key, n_bits=args.n_bits, eval_set=args.eval, eval_labels=args.eval_labels,
        tolerance_points=args.tolerance, calibration_rows=args.calibration_rows, seed=args.seed, force=args.force,
        progress=_progress("compile"),
    )
    n_bits = result.meta["n_bits"]
    if wants_json(args):
        print_json({"bundle": str(result.directory), "model_id": result.model_id, "version": result.version,
                    "n_bits": n_bits, "bundle_sha256": result.bundle_sha256, "family": result.meta.get("family"),
                    "n_bits_choice": result.meta.get("n_bits_choice"), "metrics": result.meta.get("metrics")})
        return 0
    if "n_bits_choice" in result.meta:
        print(f"chose n_bits={n_bits}")
    print(f"bundle: {result.directory} (model {result.model_id} version {result.version}, n_bits {n_bits})")
    print(f"bundle sha256: {result.bundle_sha256}")
    metrics = result.meta.get("metrics")
    if metrics:
        m = metrics["metric"]
        print(f"{m} on {metrics['eval_rows']} public rows: clear {_fmt(metrics[f'clear_{m}'], m)}, "
              f"simulated FHE {_fmt(metrics[f'fhe_simulated_{m}'], m)}")
    return 0


def _choose(args: argparse.Namespace) -> int:
    if args.min_bits > args.max_bits:
        raise ConfigError(f"--min {args.min_bits} is above --max {args.max_bits}")

    artifact = TrainingArtifact.load(args.artifact)
    eval_set = api.load_eval_rows(args.eval, args.eval_labels, artifact.schema)
    assert eval_set is not None
    eval_set = (artifact.prep.transform(eval_set[0], args.eval), eval_set[1])
    estimator = artifact.to_estimator()
    say = _progress("choose-n-bits")
    metric = "accuracy" if artifact.schema.is_classifier else "r2"
    say(f"{artifact.family}: one circuit per n_bits in {args.min_bits}..{args.max_bits}, simulated on "
        f"{len(eval_set[1])} rows")
    choice = choose_n_bits(
        estimator, artifact.family, artifact.schema, *eval_set,
        candidates=range(args.min_bits, args.max_bits + 1), tolerance_points=args.tolerance,
        calibration_set=calibration_set(artifact.schema, estimator, prep=artifact.prep),
        on_trial=lambda t: say(f"n_bits {t.n_bits}: simulated {_fmt(t.simulated, metric)} ({t.seconds:.1f} s)"
                               + (f", FHE {t.fhe_ms_per_row:.1f} ms/row" if t.fhe_ms_per_row is not None else "")),
        latency_rows=args.latency_rows,
    )
    if wants_json(args):
        print_json(choice.to_dict())
    else:
        print(f"clear {choice.metric}: {_fmt(choice.clear, choice.metric)}")
        for t in choice.trials:
            latency = f", FHE {t.fhe_ms_per_row:.1f} ms/row" if t.fhe_ms_per_row is not None else ""
            print(f"  n_bits {t.n_bits:2d}: simulated {_fmt(t.simulated, choice.metric)} ({t.seconds:.1f}s{latency})")
    if args.json:
        args.json.write_text(json.dumps(choice.to_dict(), indent=2) + "\n")
    if choice.chosen is None:
        raise ConfigError(f"no n_bits in {args.min_bits}..{args.max_bits} keeps simulated {choice.metric} "
                          f"within {args.tolerance} points of clear")
    if not wants_json(args):
        print(f"chosen n_bits: {choice.chosen}")
    return 0


def _train_local(args: argparse.Namespace) -> int:
    models.check_params(args.model, args.model_params, "--model-params")
    key = load_signing_key(args.release_key)
    schema = resolve_schema(args.schema)
    eval_set = api.load_eval_rows(args.eval, args.eval_labels, schema)
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


def _grid(value: str) -> dict[str, list[Any]]:
    grid = _json_object(value)
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise argparse.ArgumentTypeError(f"{k}: expected a non-empty list of values, e.g. '{{\"C\": [0.1, 1]}}'")
    return grid


def _bits_list(value: str) -> list[int]:
    try:
        bits = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated integers, e.g. 4,6,8") from None
    if not bits or any(not 1 <= b <= 16 for b in bits):
        raise argparse.ArgumentTypeError(f"{value!r}: each n_bits must be between 1 and 16")
    return bits


def _tune(args: argparse.Namespace) -> int:
    schema = resolve_schema(args.schema)
    X, y = load_table(args.data, schema, args.labels)
    prep = Preprocessing.local(schema, X)
    eval_set = api.load_eval_rows(args.eval, args.eval_labels, schema)
    assert eval_set is not None
    say = _progress("tune")
    result = tune(prep.transform(X, args.data), y, schema, args.model, args.grid, args.n_bits,
                  prep.transform(eval_set[0], args.eval), eval_set[1], cv=args.cv,
                  tolerance_points=args.tolerance, latency_rows=args.latency_rows, progress=say, prep=prep)
    doc = result.to_dict()
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if wants_json(args):
        print_json(doc)
        return 0
    m = result.metric
    print(f"{'':2}{'parameters':32} {'n_bits':>6} {'cv ' + m:>12} {'clear':>8} {'simulated':>9} {'FHE ms/row':>10}")
    for c in sorted(result.candidates, key=lambda c: (c.fhe_ms_per_row, -c.simulated)):
        mark = "*" if c is result.chosen else ("f" if c.frontier else " ")
        print(f"{mark:2}{json.dumps(c.params):32} {c.n_bits:6d} {c.cv_score:12.4f} {c.clear:8.4f} "
              f"{c.simulated:9.4f} {c.fhe_ms_per_row:10.1f}")
    chosen = result.chosen
    assert chosen is not None
    print(f"f: on the frontier (no candidate both more accurate and faster); *: chosen, the fastest within "
          f"{args.tolerance} points of the best simulated {m}")
    print(f"chosen: {json.dumps(chosen.params)} n_bits {chosen.n_bits} (simulated {chosen.simulated:.4f}, "
          f"{chosen.fhe_ms_per_row:.1f} ms/row); train it: fedfhe-coordinator train-local --model {args.model} "
          f"--model-params '{json.dumps(chosen.params)}' ..., then compile --n-bits {chosen.n_bits}")
    return 0


EVAL_LABELS = "labels file for an IDX --eval"


def register(sub: argparse._SubParsersAction) -> None:
    """Add compile, choose-n-bits and train-local to fedfhe-coordinator's subcommands."""
    p = sub.add_parser("compile", help="compile a training artifact into an FHE deployment bundle")
    p.add_argument("--artifact", type=Path, required=True, help="training artifact directory")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--n-bits", type=_n_bits, default=None,
                   help="quantisation bits (default 8 for linear families, 6 for trees), or 'auto' (needs --eval)")
    p.add_argument("--model-id", help="model id served by the inference node (default: <schema>-<family>)")
    p.add_argument("--model-version", help="model version (default: UTC timestamp)")
    p.add_argument("--eval", type=Path, help="public evaluation file (CSV/NPZ/IDX) to measure accuracy on")
    p.add_argument("--eval-labels", type=Path, help="labels file for an IDX --eval")
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy points allowed for --n-bits auto")
    p.add_argument("--calibration-rows", type=int, default=200, help="uniform rows drawn from the schema bounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration rows (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--release-key", type=Path, required=True,
                   help="release signing key (release.key): verifies the artifact, signs the bundle")
    add_format(p)
    p.set_defaults(fn=_compile)

    p = sub.add_parser("choose-n-bits", help="smallest n_bits whose simulated accuracy is within tolerance")
    p.add_argument("--artifact", type=Path, required=True, help="training artifact directory")
    p.add_argument("--eval", type=Path, required=True, help="public evaluation file")
    p.add_argument("--eval-labels", type=Path, help=EVAL_LABELS)
    p.add_argument("--min", dest="min_bits", type=int, default=2, help="smallest n_bits tried (default 2)")
    p.add_argument("--max", dest="max_bits", type=int, default=12, help="largest n_bits tried (default 12)")
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy points (default 0.5)")
    p.add_argument("--json", type=Path, help="also write the trials as JSON here")
    p.add_argument("--latency-rows", type=int, default=0,
                   help="also execute this many --eval rows in real FHE per n_bits and report ms/row (default 0)")
    add_format(p)
    p.set_defaults(fn=_choose)

    p = sub.add_parser("tune", help="local path: GridSearchCV x n_bits, scored in clear, simulated FHE and real "
                                    "FHE latency; prints the frontier and picks the fastest within tolerance")
    p.add_argument("--data", type=Path, required=True, help="training rows: CSV with a label column, NPZ or IDX")
    p.add_argument("--labels", type=Path, help="labels file for IDX images")
    p.add_argument("--schema", default="digits", help="built-in schema name or schema YAML file")
    p.add_argument("--model", default="LogisticRegression", help="model family (see fedfhe_common.ml.models)")
    p.add_argument("--grid", type=_grid, default={}, help='JSON object: parameter -> values, e.g. \'{"C": [0.1, 1]}\'')
    p.add_argument("--n-bits", type=_bits_list, default=[4, 6, 8], help="comma-separated n_bits (default 4,6,8)")
    p.add_argument("--eval", type=Path, required=True, help="public evaluation rows (scored clear and simulated)")
    p.add_argument("--eval-labels", type=Path, help=EVAL_LABELS)
    p.add_argument("--cv", type=int, default=3, help="GridSearchCV folds (default 3)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="points of simulated accuracy (R² x 100) the pick may lose against the best (default 0.5)")
    p.add_argument("--latency-rows", type=int, default=3, help="evaluation rows executed in real FHE per candidate")
    p.add_argument("--json", type=Path, help="also write every candidate, the frontier and the pick as JSON here")
    add_format(p)
    p.set_defaults(fn=_tune)

    p = sub.add_parser("train-local", help="train on one local file and write a training artifact (origin=local)")
    p.add_argument("--data", type=Path, required=True, help="CSV with a label column, NPZ (X, y) or IDX images")
    p.add_argument("--labels", type=Path, help="labels file for IDX images")
    p.add_argument("--schema", default="digits", help="built-in schema name or schema YAML file")
    p.add_argument("--model", default="LogisticRegression",
                   help="model family: a linear one, or a tree one (DecisionTree/RandomForest/XGB + "
                        "Classifier/Regressor; see fedfhe_common.ml.models)")
    p.add_argument("--model-params", type=_json_object, default={}, help="JSON object of estimator parameters")
    p.add_argument("--epochs", type=int, default=10, help="warm-started fits (linear families; a tree fits once)")
    p.add_argument("--eval", type=Path, help="public evaluation file")
    p.add_argument("--eval-labels", type=Path, help=EVAL_LABELS)
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--release-key", type=Path, required=True, help="release signing key (release.key)")
    p.set_defaults(fn=_train_local)
