"""Run a Flower process under a fedfhe wrapper that stays alive: relay its output, pass on signals, keep its exit code.

``fedfhe-coordinator superlink`` and ``fedfhe-owner supernode`` exec Flower's process directly when they have
nothing else to do. With ``--log-format json`` (each line Flower prints becomes a JSON record, logs.wrap_line)
or a metrics endpoint to serve, the wrapper stays as the parent instead: this module.

Signals: the child stays in the wrapper's process group, so a service manager's group-wide SIGTERM
(systemd's control group, fedfhe-service's killpg, Ctrl-C on a terminal) reaches Flower directly, as
it did before. A signal sent to the wrapper alone must reach Flower too, but Flower's handler resets
SIGTERM/SIGINT to their default on the first one, so a second copy would kill it mid-shutdown: the
wrapper passes a signal on unless, after a moment, Flower no longer catches it although it did before
(``SigCgt`` in ``/proc/PID/status``), i.e. it got one of its own. (A Flower still starting up, its
handlers not yet installed, gets it: the default action is what a direct signal would have done.)
Flower 1.39's SuperLink and SuperNode run under uvicorn, which keeps its handler and, once shut down,
re-raises the signal on itself: :func:`exit_as` ends the wrapper the same way, so a service manager
sees what it saw when the wrapper exec'd Flower (killed by SIGTERM, a clean stop for systemd).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from fedfhe_common.runtime.logs import wrap_line

log = logging.getLogger("fedfhe.relay")
FORWARDED = (signal.SIGTERM, signal.SIGINT)
FORWARD_AFTER_S = 1.0  # how long Flower gets to act on a group-wide signal before the wrapper passes one on
WATCH_S = 0.05  # how often the child's signal handlers are looked at (/proc/PID/status)
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


def run_relayed(cmd: list[str], env: dict[str, str], source: str, *, json_lines: bool) -> int:
    """Run ``cmd`` until it exits and return its exit code (-N when signal N ended it, as Popen says).

    ``json_lines``: its stdout and stderr are read line by line and written to this process's
    stdout and stderr as JSON records naming ``source``; otherwise the child writes to them itself.
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

    caught: set[int] = set()  # signals the child was seen catching: it has installed its handlers

    def watch() -> None:
        for sig in FORWARDED:
            if sig not in caught and catches(proc.pid, sig):
                caught.add(sig)
                log.info("%s (pid %d) handles %s", source, proc.pid, signal.Signals(sig).name)

    def on_signal(signum: int, _frame: object) -> None:
        watch()  # as it arrives: the child, if it catches it, has not yet run its handler
        pending.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in FORWARDED}
    try:
        log.info("%s started (pid %d)", source, proc.pid)
        forward_at: dict[int, float] = {}
        while proc.poll() is None:
            watch()
            while pending:
                forward_at.setdefault(pending.pop(), time.monotonic() + FORWARD_AFTER_S)
            for sig, at in list(forward_at.items()):
                if time.monotonic() >= at:
                    del forward_at[sig]
                    if proc.poll() is None and (catches(proc.pid, sig) or sig not in caught):
                        log.info("passing %s on to %s (pid %d)", signal.Signals(sig).name, source, proc.pid)
                        proc.send_signal(sig)
            try:
                proc.wait(WATCH_S)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for t in pumps:
        t.join(DRAIN_S)
    code = proc.returncode
    log.info("%s exited with %s", source, code)
    return code


def exit_as(code: int) -> int:
    """The child's end as this process's: its exit code, or (``code`` -N) killed by the same signal N."""
    if code >= 0:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(-code, signal.SIG_DFL)
    signal.raise_signal(-code)
    return 128 - code  # the signal's default action does not end the process (SIGCHLD, ...)
