"""fedfhe-owner: the data owner's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.ml.data import load_table, read_typed
from fedfhe_common.ml.schema_draft import draft_schema
from fedfhe_common.pki.app_approval import app_dir_digest, fab_digest
from fedfhe_common.runtime.config_check import add_check_config, schema_problems
from fedfhe_common.runtime.console import add_command, add_examples, command_parser, run
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_common.runtime.logs import add_log_options
from fedfhe_owner import config as owner_config
from fedfhe_owner.predict.predict_commands import register as register_predict  # predict, delete-keys
from fedfhe_owner.supernode.launch import run_supernode


def _supernode(args: argparse.Namespace) -> int:
    return run_supernode(owner_config.load(args.config), args.config, args.log_format, args.log_level)


def _check_data(args: argparse.Namespace) -> int:
    """Every cell that breaks a typed schema (line, column, value, rule), not only the first."""
    cfg = owner_config.load(args.config)
    schema = resolve_schema(cfg.schema)
    if not schema.typed:
        X, y = load_table(cfg.data, schema, cfg.labels)
        print(f"{cfg.data}: {len(X)} rows, {X.shape[1]} features: ok")
        return 0
    table = read_typed(cfg.data, schema)
    for problem in table.problems:
        print(f"{cfg.data}: {problem}")
    if table.problems:
        raise FedfheError(f"{cfg.data}: {len(table.problems)} cell(s) break schema {schema.name!r} (listed above)")
    gaps = int(np.isnan(table.X).any(axis=1).sum())
    print(f"{cfg.data}: {len(table.X)} rows, {len(schema.columns)} columns ({schema.n_features} model inputs), "
          f"{gaps} row(s) with gaps the schema fills: ok")
    return 0


def _draft_schema(args: argparse.Namespace) -> int:
    text, rows = draft_schema(args.data, args.label, args.name or "", args.task or "")
    if args.out:
        if args.out.exists():
            raise FedfheError(f"{args.out}: already exists; choose another --out")
        args.out.write_text(text, encoding="utf-8")
        print(f"draft schema of {rows} rows -> {args.out}: review it before sharing (it reveals ranges and "
              "categories of these rows)", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _app_hash(args: argparse.Namespace) -> int:
    """Print the app digest to pin in approved_flower_apps, of a FAB file or of an app folder."""
    if args.fab:
        try:
            data = args.fab.read_bytes()
        except OSError as exc:
            raise FedfheError(f"{args.fab}: cannot read: {exc.strerror or exc}") from None
        print(fab_digest(data))
    else:
        print(app_dir_digest(args.app))
    return 0


def owner_problems(cfg: owner_config.OwnerConfig) -> list[str]:
    """check-config beyond the file's own keys: the schema resolves."""
    return schema_problems(cfg.schema)


# One command line per subcommand, ending its --help (tests/unit/test_cli_help.py parses each).
EXAMPLES = {
    "supernode": "--config /etc/fedfhe/owner.yaml --log-format json --log-level WARNING",
    "check-config": "--config /etc/fedfhe/owner.yaml",
    "check-data": "--config /etc/fedfhe/owner.yaml",
    "draft-schema": "--data patients.csv --label outcome --out schema.yaml",
    "app-hash": "--fab fedfhe-app.fab",
    "predict": "--config /etc/fedfhe/owner.yaml --input rows.csv --out predictions.json",
    "delete-keys": "--config /etc/fedfhe/owner.yaml --model digits-lr --model-version 1",
}


def main(argv: list[str] | None = None) -> int:
    ap, sub = command_parser("fedfhe-owner", __doc__)
    p = add_command(sub, "supernode", _supernode, "run flower-supernode (TLS, SuperNode auth) in the foreground",
                    config="owner.yaml")
    add_log_options(p)
    add_check_config(sub, owner_config.OwnerConfig, "owner.yaml", owner_problems)
    add_command(sub, "check-data", _check_data, "validate this owner's data file against the schema (every bad "
                "cell listed)", config="owner.yaml")
    p = add_command(sub, "draft-schema", _draft_schema, "print a draft typed schema read off a local CSV or Parquet "
                    "file, for review before sharing")
    p.add_argument("--data", type=Path, required=True, help="a CSV (with a header) or Parquet file on this host")
    p.add_argument("--label", required=True, help="the label (or regression target) column")
    p.add_argument("--name", help="the schema's name (default: the file's)")
    p.add_argument("--task", choices=("classification", "regression"), help="default: guessed from the labels")
    p.add_argument("--out", type=Path, help="write the draft here instead of stdout (never overwrites)")
    p = add_command(sub, "app-hash", _app_hash, "print the app digest of a Flower App (to pin in approved_flower_apps)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--fab", type=Path, help="a built FAB file (`flwr build`)")
    what.add_argument("--app", type=Path, help="a Flower App folder, built as `flwr run` builds it")

    register_predict(sub)
    add_examples(ap, EXAMPLES)
    return run(ap, argv, errors=(FileNotFoundError,))
