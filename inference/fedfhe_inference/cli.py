"""fedfhe-inference: run the inference node, publish bundles to it, list what it would serve.

``serve`` imports Concrete ML (seconds); ``publish`` and ``list`` only verify
manifests and stay fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedfhe_common.runtime.config_check import add_check_config
from fedfhe_common.runtime.console import add_command, add_examples, command_parser, run
from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_common.runtime.logs import add_log_options, configure, import_quietly
from fedfhe_common.runtime.output import add_format, print_json, wants_json

from . import config as inference_config
from .api import bundles_target, publish


def _serve(args: argparse.Namespace) -> int:
    from .server import serve  # lazy: pulls in grpc

    cfg = inference_config.load(args.config)
    configure(args.log_format, args.log_level)
    if args.log_format == "json":  # torch's CUDA notice as a record, not a bare line among the records


        for line in import_quietly("concrete.ml.deployment"):
            logging.getLogger("concrete").info(line)
    return serve(cfg)


def _publish(args: argparse.Namespace) -> int:
    done = publish(args.bundle, args.config, bundles_dir=args.bundles_dir,
                   release_public_key=args.release_public_key, reload=args.reload, wait_s=args.wait_s)
    print(f"{'published' if done.installed else 'already published'}: {done.directory}")
    for line in (done.reload, done.served):
        if line is not None:
            print(line)
    return 0


def _list(args: argparse.Namespace) -> int:
    from .bundles import read_bundle_manifest  # lazy: pulls in grpc

    bundles_dir, _, key = bundles_target(args.config, args.bundles_dir, args.release_public_key)
    if not bundles_dir.is_dir():
        raise ConfigError(f"{bundles_dir}: no such bundles directory")
    rows = []
    for model_dir in sorted(p for p in bundles_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for d in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            row = {"model_id": model_dir.name, "version": d.name}
            try:
                meta = read_bundle_manifest(d, key)
                row.update(ok=True, family=meta.get("family"), n_bits=meta.get("n_bits"))
            except FedfheError as exc:
                row.update(ok=False, reason=str(exc))
            rows.append(row)
    refused = sum(not r["ok"] for r in rows)
    if wants_json(args):
        print_json({"bundles_dir": str(bundles_dir), "bundles": rows, "refused": refused})
        return 1 if refused else 0
    for r in rows:
        where = f"{r['model_id']}/{r['version']}"
        print(f"{where}: ok ({r['family'] or '?'}, n_bits {r['n_bits'] or '?'})" if r["ok"]
              else f"{where}: REFUSED: {r['reason']}")
    if refused:  # the node would not serve them: a failed check for scripts and Ansible, not a 0
        raise FedfheError(f"{bundles_dir}: {refused} bundle(s) refused (listed above)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap, sub = command_parser("fedfhe-inference", __doc__)
    p = add_command(sub, "serve", _serve, "run the mutual-TLS gRPC inference service in the foreground")
    p.add_argument("--config", type=Path, required=True, help="inference.yaml")
    add_log_options(p)
    add_check_config(sub, inference_config.InferenceConfig, "inference.yaml")
    for name, fn, help_text in (
        ("publish", _publish, "verify a bundle directory and install it into the bundles directory"),
        ("list", _list, "verify and list the bundles a server with this config would serve"),
    ):
        p = add_command(sub, name, fn, help_text)
        p.add_argument("--config", type=Path, help="inference.yaml (for bundles_dir and pid_file)")
        p.add_argument("--bundles-dir", type=Path, help="the bundles directory, instead of --config")
        p.add_argument("--release-public-key", type=Path, help="release.pub (default: the config's)")
        if name == "publish":
            p.add_argument("bundle", type=Path, help="bundle directory written by 'fedfhe-coordinator compile'")
            p.add_argument("--reload", action="store_true", help="send SIGHUP to the running server (pid_file)")
            p.add_argument("--wait-s", type=float, default=120.0, metavar="SECONDS",
                           help="with --reload: wait this long until the server serves the version (its "
                                "metrics_address says so); 0 returns at once (default 120)")
        else:
            add_format(p)
    add_examples(ap, {
        "serve": "--config /etc/fedfhe/inference.yaml --log-format json --log-level WARNING",
        "check-config": "--config /etc/fedfhe/inference.yaml",
        "publish": "--config /etc/fedfhe/inference.yaml bundles/digits-lr-1 --reload",
        "list": "--config /etc/fedfhe/inference.yaml --format json",
    })
    return run(ap, argv, errors=(FileNotFoundError,))
