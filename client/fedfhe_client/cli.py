"""fedfhe-client: the data owner's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedfhe_common.errors import FedfheError
from fedfhe_common.procs import exec_in_venv

from . import config as owner_config


def _supernode(args: argparse.Namespace) -> int:
    from fedfhe_common.data import load_table
    from fedfhe_common.schema import resolve_schema

    from .supernode import supernode_command

    cfg = owner_config.load(args.config)
    try:
        X, _ = load_table(cfg.data, resolve_schema(cfg.schema), cfg.labels)
        print(f"fedfhe-client: {cfg.data}: {len(X)} rows fit schema {cfg.schema}", file=sys.stderr)
    except FedfheError as exc:
        # Stay up: the owner can fix the file before the next run; each run reports the problem.
        print(f"fedfhe-client: warning: {exc}", file=sys.stderr)
    cmd = supernode_command(cfg)
    exec_in_venv(cmd)


def _check_data(args: argparse.Namespace) -> int:
    from fedfhe_common.data import load_table
    from fedfhe_common.schema import resolve_schema

    cfg = owner_config.load(args.config)
    X, y = load_table(cfg.data, resolve_schema(cfg.schema), cfg.labels)
    print(f"{cfg.data}: {len(X)} rows, {X.shape[1]} features: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedfhe-client", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("supernode", help="run flower-supernode (TLS, SuperNode auth) in the foreground")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=_supernode)
    p = sub.add_parser("check-data", help="validate this owner's data file against the schema")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=_check_data)
    from .predict_commands import register as register_predict  # predict, delete-keys

    register_predict(sub)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (FedfheError, FileNotFoundError) as exc:
        print(f"fedfhe-client {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
