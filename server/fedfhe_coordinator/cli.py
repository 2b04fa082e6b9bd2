"""fedfhe-coordinator: the coordinator's command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.ml import models
from fedfhe_common.pki.app_approval import app_dir_fab, fab_digest
from fedfhe_common.runtime.config_check import add_check_config, problems_of, schema_problems
from fedfhe_common.runtime.console import add_command, add_examples, command_parser, run
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.fileio import write_atomic
from fedfhe_common.runtime.logs import add_log_options
from fedfhe_common.runtime.output import add_format, print_json, wants_json
from fedfhe_coordinator import config as coord_config
from fedfhe_coordinator import runs
from fedfhe_coordinator.aggregation import resolve
from fedfhe_coordinator.fhe.fhe_commands import (
    register as register_fhe_commands,  # compile, choose-n-bits, train-local
)
from fedfhe_coordinator.superlink.launch import run_superlink
from fedfhe_coordinator.train.flwr_cli import flower_app_dir, list_runs, register_supernodes, registration_plan
from fedfhe_coordinator.train.report import training_report, write_training_report
from fedfhe_coordinator.train.training import run_training, with_secure_aggregation


def _superlink(args: argparse.Namespace) -> int:
    return run_superlink(coord_config.load(args.config), args.log_format, args.log_level)


def _register(args: argparse.Namespace) -> int:
    cfg = coord_config.load(args.config)
    if args.plan:
        plan = registration_plan(cfg)
        if wants_json(args):
            print_json(plan)
        else:
            print("in sync" if plan["in_sync"] else
                  f"to register: {', '.join(plan['to_register']) or '-'}; "
                  f"to unregister: {', '.join(map(str, plan['to_unregister'])) or '-'}")
            for n in plan["nodes"]:
                print(f"SuperNode {n.get('node-id')}: {n.get('status')}")
        return 0
    lines = register_supernodes(cfg, [Path(k) for k in args.key] or None)
    if wants_json(args):
        print_json({"actions": lines})
    else:
        print("\n".join(lines))
    return 0


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console  # lazy: rich only for the commands that draw tables

    from fedfhe_coordinator.train.progress import RoundTable  # lazy: pulls in rich

    cfg = with_secure_aggregation(coord_config.load(args.config), args.secure_aggregation)
    overrides = {}
    if args.rounds:
        overrides["num-server-rounds"] = args.rounds
    started: dict[str, int] = {}
    t0 = time.monotonic()
    # The round table is the command's result for people: stdout (Ansible's train.yml prints it);
    # with --format json stdout carries only the JSON summary, and the table goes to stderr.
    console = Console(stderr=wants_json(args))
    with RoundTable(args.rounds or cfg.training.rounds, console) as table:
        artifact = run_training(cfg, overrides, on_round=table.add,
                                on_start=lambda run_id: started.update(run_id=run_id))
    run_id = started.get("run_id")
    status = runs.records(cfg.release_home).get(run_id or -1, {}).get("status", "") if run_id else ""
    report = training_report(artifact, run_id=run_id, status=status, owners=cfg.owner_names(),
                             seconds=time.monotonic() - t0)
    paths = write_training_report(report, cfg.report_dir)
    if "png" not in paths:
        print("fedfhe-coordinator train: accuracy.png skipped: matplotlib is not installed "
              "(pip install 'fedfhe-coordinator[report]')", file=sys.stderr)
    artifact_dir = cfg.report_dir / "artifact"
    if wants_json(args):
        print_json({**report, "artifact": str(artifact_dir), "report": {k: str(v) for k, v in paths.items()}})
    else:
        secure = ", secure aggregation (SecAgg+)" if report["privacy"].get("secure_aggregation") else ""
        print(f"Flower run {run_id} ({status}): artifact {artifact_dir} ({artifact.family}, "
              f"{artifact.metrics['rounds']} rounds{secure})")
        print(f"report: {'  '.join(str(p) for p in paths.values())}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from rich.console import Console  # lazy: rich only for the commands that draw tables


    cfg = coord_config.load(args.config)
    rows = runs.joined(list_runs(cfg), runs.records(cfg.release_home))
    if args.limit:
        rows = rows[: args.limit]
    if wants_json(args):
        print_json({"runs": rows})
    else:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        console.print(runs.render(rows))
    return 0


def _app_hash(args: argparse.Namespace) -> int:
    """The digest owners pin (approved_flower_apps): the Flower App `train` submits; with --fab-out, that FAB
    written to a file, for an owner organisation to review and hash itself (`fedfhe-owner app-hash --fab`)."""
    fab = app_dir_fab(flower_app_dir())
    if args.fab_out is not None:
        write_atomic(args.fab_out, fab, mode=0o644)
    print(fab_digest(fab))
    return 0


def coordinator_problems(cfg: coord_config.CoordinatorConfig) -> list[str]:
    """check-config beyond the file's own keys: the schema resolves and the model family fits it."""
    problems = schema_problems(cfg.training.schema, "training.schema")
    if not problems:
        t = cfg.training
        schema = resolve_schema(t.schema)
        try:
            models.check_family(t.model, schema)
            models.check_params(t.model, t.model_params, "training.model_params")
        except ConfigError as exc:
            problems += [p if p.startswith("training.model_params") else f"training.model: {p}"
                         for p in problems_of(exc)]
        try:
            sa = t.secure_aggregation
            resolve(t.aggregation, t.model, schema, sa.enabled, t.clip_norm, sa.enabled and sa.noise_multiplier > 0,
                    t.model_params)
        except ConfigError as exc:
            problems += problems_of(exc)
    return problems


CONFIG = "coordinator.yaml"
# One command line per subcommand, ending its --help (tests/unit/test_cli_help.py parses each).
EXAMPLES = {
    "superlink": "--config /etc/fedfhe/coordinator.yaml --log-format json --log-level DEBUG",
    "register": "--config /etc/fedfhe/coordinator.yaml --plan",
    "train": "--config /etc/fedfhe/coordinator.yaml --rounds 5",
    "runs": "--config /etc/fedfhe/coordinator.yaml --limit 10",
    "check-config": "--config /etc/fedfhe/coordinator.yaml --schema schema.yaml",
    "app-hash": "--fab-out fedfhe-app.fab",
    "compile": "--artifact training/artifact --out bundles/digits-lr-1 --release-key release.key "
               "--eval public-test.npz",
    "choose-n-bits": "--artifact training/artifact --eval public-test.npz --min 4 --max 10",
    "tune": "--data train.csv --schema schema.yaml --model LogisticRegression --grid '{\"C\": [0.1, 1]}' "
            "--eval public-test.csv",
    "train-local": "--data train.csv --schema schema.yaml --model DecisionTreeClassifier "
                   "--model-params '{\"max_depth\": 3}' --out training/artifact --release-key release.key",
}


def main(argv: list[str] | None = None) -> int:
    ap, sub = command_parser("fedfhe-coordinator", __doc__)
    p = add_command(sub, "superlink", _superlink, "run flower-superlink (TLS, SuperNode auth) in the foreground",
                    config=CONFIG)
    add_log_options(p)
    p = add_command(sub, "register", _register, "register SuperNode public keys with the SuperLink", config=CONFIG)
    p.add_argument("--key", action="append", default=[], help="public key file (default: all in the config)")
    p.add_argument("--plan", action="store_true",
                   help="only show what would change (keys to register, nodes to unregister) and each node's status")
    add_format(p)
    p = add_command(sub, "train", _train, "submit a federated run with flwr run and write the training artifact",
                    config=CONFIG)
    p.add_argument("--rounds", type=int, default=0,
                   help="federated rounds of this run (default: training.rounds of the config)")
    p.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=None,
                   help="run this training with SecAgg+ on (or off), whatever training.secure_aggregation.enabled "
                        "says; the section's other keys apply and are checked (default: as configured)")
    add_format(p)
    p = add_command(sub, "runs", _runs, "list the SuperLink's runs and their status (flwr ls), with fedfhe's record",
                    config=CONFIG)
    p.add_argument("--limit", type=int, default=0, help="show only the newest N runs")
    add_format(p)
    add_check_config(sub, coord_config.CoordinatorConfig, "coordinator.yaml", coordinator_problems)
    p = add_command(sub, "app-hash", _app_hash,
                    "print the digest of the Flower App that `train` submits (owners pin it)")
    p.add_argument("--fab-out", type=Path, default=None, metavar="FILE",
                   help="also write that app as a FAB file, for owner organisations to review and hash themselves")

    register_fhe_commands(sub)
    add_examples(ap, EXAMPLES)
    return run(ap, argv, errors=(FileNotFoundError, TimeoutError))
