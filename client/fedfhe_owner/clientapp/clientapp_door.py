"""The ``flwr-clientapp`` a SuperNode starts: hand the message to the ClientApp server, or run it cold.

Flower's SuperExec starts ``flwr-clientapp`` by bare name for every message.
``fedfhe-owner supernode`` writes this module's source, with two constants, as
that executable (``fedfhe_owner.supernode.launch.write_clientapp_shim``), run by
``python -I -S``: standard library only, about 20 ms to start. It passes its
arguments and its stdin/stdout/stderr over a Unix socket to the resident server
(``fedfhe_owner.clientapp.clientapp_server``), which forks a pre-imported child that
checks the Flower App and runs the ClientApp. The door then waits for that
child's exit code and exits with it, forwarding SIGTERM/SIGINT/SIGHUP, so the
SuperExec sees one process per message as with Flower's own ``flwr-clientapp``.

When no server answers, or it declines before forking, the door becomes the cold
launcher (``python -m fedfhe_owner.clientapp.clientapp_launcher``, same arguments): a
message is never lost to the server's absence, only slower.

Protocol, one connection per message: the door sends one JSON line (the argument
list) with three descriptors attached (SCM_RIGHTS); the server answers
``pid N`` once it has forked, the child ``exit N`` when it is done; or the server
answers ``cold REASON`` and forks nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import NoReturn

MAX_LINE = 64 * 1024


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    """A connection to the server at ``path`` (any length: bound through /proc/self/fd like the server)."""
    folder, name = os.path.split(path)
    dirfd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(f"/proc/self/fd/{dirfd}/{name}")
        conn.settimeout(None)
    except OSError:
        conn.close()
        raise
    finally:
        os.close(dirfd)
    return conn


def run_cold(cold: list[str], argv: list[str], why: str) -> NoReturn:
    """Replace this process with the cold launcher (never returns)."""
    print(f"fedfhe: ClientApp started cold (one process per message): {why}", file=sys.stderr, flush=True)
    os.execv(cold[0], [*cold, *argv])


def main(socket_path: str, cold: list[str], argv: list[str]) -> int:
    """Run one message through the server at ``socket_path``; its child's exit code."""
    try:
        conn = connect(socket_path)
    except OSError as exc:
        run_cold(cold, argv, f"no ClientApp server at {socket_path} ({exc.strerror or exc})")
    with conn:
        try:
            socket.send_fds(conn, [json.dumps(argv).encode() + b"\n"], [0, 1, 2])
            reader = conn.makefile("rb")
            first = reader.readline(MAX_LINE).decode(errors="replace").split(maxsplit=1)
        except OSError as exc:
            first = ["cold", f"the server failed before forking ({exc})"]
        if len(first) != 2 or first[0] != "pid" or not first[1].strip().isdigit():
            run_cold(cold, argv, first[1].strip() if len(first) == 2 else "the server closed before forking")
        child = int(first[1])

        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        last = reader.readline(MAX_LINE).decode(errors="replace").split()
    if len(last) == 2 and last[0] == "exit" and last[1].lstrip("-").isdigit():
        return int(last[1])
    print(f"fedfhe: ClientApp process {child} ended without reporting an exit code", file=sys.stderr, flush=True)
    return 1
