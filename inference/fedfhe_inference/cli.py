"""fedfhe-inference: run the inference node, publish bundles to it, list what it would serve.

``serve`` imports Concrete ML (seconds); ``publish`` and ``list`` only verify
manifests and stay fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
from pathlib import Path
from typing import Any

from fedfhe_common.config_check import add_check_config
from fedfhe_common.console import add_command, add_examples, command_parser, run
from fedfhe_common.errors import ConfigError, FedfheError
from fedfhe_common.logs import add_log_options
from fedfhe_common.output import add_format, print_json, wants_json

from . import config as inference_config


def _serve(args: argparse.Namespace) -> int:
    from fedfhe_common.logs import configure

    from .server import serve

    cfg = inference_config.load(args.config)
    configure(args.log_format, args.log_level)
    if args.log_format == "json":  # torch's CUDA notice as a record, not a bare line among the records
        import logging

        from fedfhe_common.logs import import_quietly

        for line in import_quietly("concrete.ml.deployment"):
            logging.getLogger("concrete").info(line)
    return serve(cfg)


def _bundles_dir(args: argparse.Namespace) -> tuple[Path, Path | None, Any]:
    """(bundles dir, pid file, release public key) from --config, or from --bundles-dir + --release-public-key."""
    from fedfhe_common.release import load_verify_key

    if args.bundles_dir:
        if not args.release_public_key:
            raise ConfigError("--bundles-dir needs --release-public-key release.pub (bundles must be signed)")
        return args.bundles_dir, None, load_verify_key(args.release_public_key)
    if not args.config:
        raise ConfigError("give --config inference.yaml or --bundles-dir DIR")
    cfg = inference_config.load(args.config)
    return cfg.bundles_dir, cfg.pid_file, load_verify_key(args.release_public_key or cfg.release_public_key)


def read_pid(pid_file: Path) -> tuple[int, int]:
    """The pid in ``pid_file`` (a regular file, not a link) and the uid that owns the file.

    ``publish --reload`` may run as root while the pid file lies in the service's writable state: a planted
    link, "-1" (every process) or another process's pid must never be signalled.
    """
    fd = os.open(pid_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FedfheError(f"{pid_file}: not a regular file; not signalling anything")
        text = os.read(fd, 32).decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit() or int(text) <= 1:
        raise FedfheError(f"{pid_file}: {text[:20]!r} is not a server's pid; not signalling anything")
    return int(text), info.st_uid


def check_server(pid: int, uid: int, pid_file: Path) -> None:
    """Refuse unless ``pid`` is a ``fedfhe-inference serve`` run by ``uid``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        owner = Path(f"/proc/{pid}").stat().st_uid
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    serving = any(b"fedfhe-inference" in a or b"fedfhe_inference" in a for a in cmdline) and b"serve" in cmdline
    if not serving or owner != uid:
        raise FedfheError(f"{pid_file}: pid {pid} is not a fedfhe-inference server run by the file's owner "
                          f"(uid {uid}); not signalling it")


def _reload(pid_file: Path | None) -> str:
    if pid_file is None:
        return "no pid_file in the config: the server picks the bundle up at its next rescan (or send it SIGHUP)"
    try:
        pid, uid = read_pid(pid_file)
        pidfd = os.pidfd_open(pid)  # held from here: the process checked is the one signalled, even if pids recycle
        try:
            check_server(pid, uid, pid_file)
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
        finally:
            os.close(pidfd)
    except FileNotFoundError:
        return f"{pid_file}: no server running; the bundle is served when it starts"
    except ProcessLookupError:
        return f"{pid_file}: its server is gone; the bundle is served when one starts"
    except OSError as exc:
        raise FedfheError(f"{pid_file}: cannot signal the server: {exc}") from None
    return f"asked the server (pid {pid}) to rescan"


def _publish(args: argparse.Namespace) -> int:
    from .bundles import publish_bundle

    bundles_dir, pid_file, key = _bundles_dir(args)
    dest, installed = publish_bundle(args.bundle, bundles_dir, key)
    print(f"{'published' if installed else 'already published'}: {dest}")
    if args.reload:
        print(_reload(pid_file))
    return 0


def _list(args: argparse.Namespace) -> int:
    from .bundles import read_bundle_manifest

    bundles_dir, _, key = _bundles_dir(args)
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
        else:
            add_format(p)
    add_examples(ap, {
        "serve": "--config /etc/fedfhe/inference.yaml --log-format json --log-level WARNING",
        "check-config": "--config /etc/fedfhe/inference.yaml",
        "publish": "--config /etc/fedfhe/inference.yaml bundles/digits-lr-1 --reload",
        "list": "--config /etc/fedfhe/inference.yaml --format json",
    })
    return run(ap, argv, errors=(FileNotFoundError,))
