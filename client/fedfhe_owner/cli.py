"""fedfhe-owner: the data owner's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedfhe_common.config_check import add_check_config
from fedfhe_common.console import add_command, command_parser, run
from fedfhe_common.errors import FedfheError
from fedfhe_common.logs import add_log_format

from . import config as owner_config


def _supernode(args: argparse.Namespace) -> int:
    from .supernode import run_supernode

    return run_supernode(owner_config.load(args.config), args.config, args.log_format)


def _check_data(args: argparse.Namespace) -> int:
    from fedfhe_common.data import load_table
    from fedfhe_common.schema import resolve_schema

    cfg = owner_config.load(args.config)
    X, y = load_table(cfg.data, resolve_schema(cfg.schema), cfg.labels)
    print(f"{cfg.data}: {len(X)} rows, {X.shape[1]} features: ok")
    return 0


def _app_hash(args: argparse.Namespace) -> int:
    """Print the app digest to pin in approved_flower_apps, of a FAB file or of an app folder."""
    from fedfhe_common.app_approval import app_dir_digest, fab_digest

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
    from fedfhe_common.config_check import schema_problems

    return schema_problems(cfg.schema)


def main(argv: list[str] | None = None) -> int:
    ap, sub = command_parser("fedfhe-owner", __doc__)
    p = add_command(sub, "supernode", _supernode, "run flower-supernode (TLS, SuperNode auth) in the foreground",
                    config=True)
    add_log_format(p)
    add_check_config(sub, owner_config.OwnerConfig, "owner.yaml", owner_problems)
    add_command(sub, "check-data", _check_data, "validate this owner's data file against the schema", config=True)
    p = add_command(sub, "app-hash", _app_hash, "print the app digest of a Flower App (to pin in approved_flower_apps)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--fab", type=Path, help="a built FAB file (`flwr build`)")
    what.add_argument("--app", type=Path, help="a Flower App folder, built as `flwr run` builds it")
    from .predict_commands import register as register_predict  # predict, delete-keys

    register_predict(sub)
    return run(ap, argv, errors=(FileNotFoundError,))
