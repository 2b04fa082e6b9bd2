"""Small helpers for launchers: find sibling executables, wait on conditions with deadlines."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path


def venv_bin(name: str) -> str:
    """An executable from this interpreter's environment first, then PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name}: not installed in {Path(sys.executable).parent} nor on PATH")
    return found


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``cond`` until true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def exec_in_venv(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Replace this process with ``cmd``, this environment's bin first on PATH.

    flower-superlink and flower-supernode spawn flower-superexec, flwr-serverapp
    and flwr-clientapp by bare name: without the venv on PATH they fail with
    "No such file or directory: 'flower-superexec'". ``env`` (default
    ``flower_env()``) replaces the whole environment.
    """
    os.execve(cmd[0], cmd, flower_env() if env is None else env)


def flower_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: venv on PATH, no phoning home, prompt task pickup.

    Flower's telemetry and update check would try the internet (hosts here have
    none); FLWR_SUPEREXEC_TASK_POLL_INTERVAL (default 1 s) is how often the
    SuperExec looks for a message to start an app process for.
    """
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.5")
    return env
