"""Publishing a bundle on the inference node as a Python call: what ``fedfhe-inference publish`` does.

    from fedfhe_inference.api import publish

    done = publish("bundles/digits-lr-2", "/etc/fedfhe/inference.yaml", reload=True)
    print(done.directory, done.installed, done.reload)

It runs where the bundles directory is (the inference node), so it lives in the inference package;
the coordinator's half is ``fedfhe_coordinator.api.compile_bundle``. The bundle's manifest is
verified against the release public key before anything is installed, a version is immutable
(the identical bundle again is a no-op, a different one is refused), and ``reload`` signals only a
``fedfhe-inference serve`` of the pid file's owner.
"""

from __future__ import annotations

import os
import signal
import stat
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.pki.release import load_verify_key
from fedfhe_common.runtime.errors import ConfigError, FedfheError

from .config import load as load_inference_config

__all__ = ["Published", "bundles_target", "check_server", "publish", "read_pid", "reload_server", "wait_served"]


@dataclass(frozen=True)
class Published:
    """Where the bundle now is, whether this call installed it (False: already there), what reload did."""

    directory: Path
    installed: bool
    reload: str | None  # None: no reload asked for
    served: str | None = None  # what waiting for the node found; None: not waited for


def bundles_target(config: str | Path | None, bundles_dir: str | Path | None = None,
                   release_public_key: str | Path | None = None) -> tuple[Path, Path | None, Ed25519PublicKey]:
    """(bundles dir, pid file, release public key) from inference.yaml, or from a bundles dir and release.pub."""
    if bundles_dir:
        if not release_public_key:
            raise ConfigError("--bundles-dir needs --release-public-key release.pub (bundles must be signed)")
        return Path(bundles_dir), None, load_verify_key(Path(release_public_key))
    if not config:
        raise ConfigError("give --config inference.yaml or --bundles-dir DIR")
    cfg = load_inference_config(Path(config))
    return cfg.bundles_dir, cfg.pid_file, load_verify_key(Path(release_public_key or cfg.release_public_key))


def _served_versions(metrics_address: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(served, refused) (model id, version) pairs from the node's own metrics endpoint on this host."""
    host, _, port = metrics_address.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host in ("::", "[::]") else host)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - the config's own http address
        text = reply.read(16 << 20).decode("utf-8", errors="replace")
    found: dict[str, set[tuple[str, str]]] = {"served": set(), "refused": set()}
    for family in text_string_to_metric_families(text):
        for kind in found:
            if family.name == f"fedfhe_inference_bundle_{kind}":
                found[kind] |= {(s.labels["model_id"], s.labels["version"]) for s in family.samples if s.value}
    return found["served"], found["refused"]


def wait_served(metrics_address: str, model_id: str, version: str, timeout_s: float) -> str:
    """Block until the node serves ``model_id/version`` (its metrics say so); FedfheError if it refused it or
    ``timeout_s`` passed. Why: a SIGHUP rescan is asynchronous, and an owner's `predict` right after a
    `publish --reload` that returned at once was refused with "serves no model yet"."""
    name, deadline, last = f"{model_id}/{version}", time.monotonic() + timeout_s, "no answer yet"
    while True:
        try:
            served, refused = _served_versions(metrics_address)
            if (model_id, version) in served:
                return f"the node serves {name}"
            if (model_id, version) in refused:
                raise FedfheError(f"the node refused {name}; its log names the reason")
            last = f"serving {', '.join(sorted('/'.join(v) for v in served)) or 'nothing'}"
        except OSError as exc:
            last = f"metrics at {metrics_address} unreachable: {exc}"
        if time.monotonic() > deadline:
            raise FedfheError(f"the node did not serve {name} within {timeout_s:.0f} s ({last})")
        time.sleep(0.2)


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


def reload_server(pid_file: Path | None) -> str:
    """SIGHUP to the server ``pid_file`` names (it rescans its bundles); what happened, as a line for people."""
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


def publish(bundle_dir: str | Path, inference_config: str | Path | None, *, bundles_dir: str | Path | None = None,
            release_public_key: str | Path | None = None, reload: bool = False,
            wait_s: float = 0.0) -> Published:
    """Verify the bundle in ``bundle_dir`` and install it as ``<bundles_dir>/<model_id>/<version>``.

    ``inference_config`` (inference.yaml) names the bundles directory, the release public key and the
    pid file; without it, ``bundles_dir`` and ``release_public_key`` must both be given. ``reload``:
    ask the running server to rescan now (else it does at its next rescan); with ``wait_s`` > 0, then
    wait until the node serves the version (through the config's ``metrics_address``).
    """
    from .bundles import publish_bundle  # lazy: pulls in grpc

    target, pid_file, key = bundles_target(inference_config, bundles_dir, release_public_key)
    dest, installed = publish_bundle(Path(bundle_dir), target, key)
    if not reload:
        return Published(dest, installed, None)
    signalled = reload_server(pid_file)
    served = None
    if wait_s > 0 and signalled.startswith("asked"):
        metrics = load_inference_config(Path(inference_config)).metrics_address if inference_config else ""
        served = (wait_served(metrics, dest.parent.name, dest.name, wait_s) if metrics
                  else "not waiting: the config has no metrics_address to watch")
    return Published(dest, installed, signalled, served)
