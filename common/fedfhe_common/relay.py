"""Run a Flower process under a fedfhe wrapper that stays alive: relay its output, pass on signals, keep its exit code.

``fedfhe-coordinator superlink`` and ``fedfhe-owner supernode`` exec Flower's process directly when they have
nothing else to do. With ``--log-format json`` (each line Flower prints becomes a JSON record, logs.wrap_line)
or a metrics endpoint to serve, the wrapper stays as the parent instead: this module.

Signals: the child stays in the wrapper's process group, so a service manager's group-wide SIGTERM
(systemd's control group, fedfhe-service's killpg, Ctrl-C on a terminal) reaches Flower directly, as
it did before. A signal sent to the wrapper alone must reach Flower too, but Flower's handler resets
SIGTERM/SIGINT to their default on the first one, so a second copy would kill it mid-shutdown: the
wrapper passes a signal on only if, after a moment, Flower still catches it (``SigCgt`` in
``/proc/PID/status``), i.e. it did not get one of its own.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from .logs import wrap_line

log = logging.getLogger("fedfhe.relay")
FORWARDED = (signal.SIGTERM, signal.SIGINT)
FORWARD_AFTER_S = 1.0  # how long Flower gets to act on a group-wide signal before the wrapper passes one on
DRAIN_S = 2.0  # after the child exits, how long its grandchildren's leftover output is still relayed


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux /proc); True when unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return True


def _pump(stream: IO[bytes], out: IO[str], source: str, name: str, lock: threading.Lock, wrap: bool) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        text = wrap_line(line, source, name) if wrap else line.rstrip("\n")
        with lock:
            out.write(text + "\n")
            out.flush()


def run_relayed(cmd: list[str], env: dict[str, str], source: str, *, json_lines: bool,
                on_started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> int:
    """Run ``cmd`` until it exits and return its exit code (128 + N for signal N, as a shell reports it).

    ``json_lines``: its stdout and stderr are read line by line and written to this process's
    stdout and stderr as JSON records naming ``source``; otherwise the child writes to them itself.
    ``on_started`` runs once the child exists (the coordinator starts its metrics endpoint there).
    """
    pipe = subprocess.PIPE if json_lines else None
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
    pumps: list[threading.Thread] = []
    if json_lines:
        lock = threading.Lock()
        for stream, out, name in ((proc.stdout, sys.stdout, "stdout"), (proc.stderr, sys.stderr, "stderr")):
            t = threading.Thread(target=_pump, args=(stream, out, source, name, lock, True), daemon=True,
                                 name=f"relay-{name}")
            t.start()
            pumps.append(t)
    pending: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in FORWARDED}
    try:
        if on_started:
            on_started(proc)
        log.info("%s started (pid %d)", source, proc.pid)
        forward_at: dict[int, float] = {}
        while proc.poll() is None:
            while pending:
                forward_at.setdefault(pending.pop(), time.monotonic() + FORWARD_AFTER_S)
            for sig, at in list(forward_at.items()):
                if time.monotonic() >= at:
                    del forward_at[sig]
                    if proc.poll() is None and catches(proc.pid, sig):
                        log.info("passing %s on to %s (pid %d)", signal.Signals(sig).name, source, proc.pid)
                        proc.send_signal(sig)
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for t in pumps:
        t.join(DRAIN_S)
    code = proc.returncode
    log.info("%s exited with %s", source, code)
    return 128 - code if code < 0 else code
