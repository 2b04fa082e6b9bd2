"""fedfhe-server: the coordinator's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedfhe_common.console import add_command, command_parser, run
from fedfhe_common.procs import exec_in_venv

from . import config as coord_config


def _superlink(args: argparse.Namespace) -> int:
    from .superlink import superlink_command

    cmd = superlink_command(coord_config.load(args.config))
    exec_in_venv(cmd)  # the service manager supervises flower-superlink itself


def _register(args: argparse.Namespace) -> int:
    from .flwr_cli import register_supernodes

    cfg = coord_config.load(args.config)
    for line in register_supernodes(cfg, [Path(k) for k in args.key] or None):
        print(line)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .progress import RoundTable
    from .training import run_training

    cfg = coord_config.load(args.config)
    overrides = {}
    if args.rounds:
        overrides["num-server-rounds"] = args.rounds
    with RoundTable(args.rounds or cfg.training.rounds) as table:
        artifact = run_training(cfg, overrides, on_round=table.add)
    print(f"artifact: {cfg.training.output_dir / 'artifact'} ({artifact.family}, {artifact.metrics['rounds']} rounds)")
    return 0


def _app_hash(args: argparse.Namespace) -> int:
    """The digest owners pin (approved_flower_apps): the Flower App `train` submits."""
    from fedfhe_common.app_approval import app_dir_digest

    from .flwr_cli import flower_app_dir

    print(app_dir_digest(flower_app_dir()))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap, sub = command_parser("fedfhe-server", __doc__)
    add_command(sub, "superlink", _superlink, "run flower-superlink (TLS, SuperNode auth) in the foreground",
                config=True)
    p = add_command(sub, "register", _register, "register SuperNode public keys with the SuperLink", config=True)
    p.add_argument("--key", action="append", default=[], help="public key file (default: all in the config)")
    p = add_command(sub, "train", _train, "submit a federated run with flwr run and write the training artifact",
                    config=True)
    p.add_argument("--rounds", type=int, default=0)
    add_command(sub, "app-hash", _app_hash, "print the digest of the Flower App that `train` submits (owners pin it)")
    from .fhe_commands import register as register_fhe_commands  # compile, choose-n-bits, train-local

    register_fhe_commands(sub)
    return run(ap, argv, errors=(FileNotFoundError, TimeoutError))
