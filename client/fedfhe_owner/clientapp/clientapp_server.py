"""fedfhe's ClientApp server: one resident, pre-imported process that forks a child per message.

Why: Flower 1.39's SuperExec starts a fresh ``flwr-clientapp`` for every
message, and a fresh Python pays about 2.3 s of CPU importing Flower (which pulls
in FastAPI), NumPy, SciPy and scikit-learn before it trains for a few
milliseconds; with several owners on one machine that is most of a round. This
server imports all of it once; each message costs a ``fork()``.

Where it sits: ``fedfhe-owner supernode`` puts two executables first on the
SuperNode's PATH (``fedfhe_owner.supernode.launch.write_clientapp_shim``): a
``flower-superexec`` that forks this server beside Flower's own SuperExec (its
child, so it lives and dies with it) and then becomes that SuperExec unchanged,
and a ``flwr-clientapp`` door (``fedfhe_owner.clientapp.clientapp_door``) that hands each
message to this server over a Unix socket, or runs the cold launcher when the
server does not answer. No Flower file or function is changed.

What each child keeps from a fresh process:

- the app-approval check, per message, before anything of the FAB is unpacked
  (``fedfhe_owner.clientapp.clientapp_launcher.run_task``, the same code as the cold path);
- the door's stdin/stdout/stderr, Flower's arguments, a private work folder, and
  fresh random state (``random`` reseeds itself at fork; NumPy's global
  RandomState is reseeded here);
- a clean thread state: a forked child inherits only the forking thread, so a
  lock another thread held (gRPC's, OpenBLAS's, logging's) would stay held for
  ever. The server counts its native threads (``/proc/self/task``) before every
  fork and answers ``cold`` instead when there is more than one;
  ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS=1`` (set by
  ``fedfhe-owner supernode``) keep the BLAS pools from starting threads at import.

What differs: modules imported here come from the installed packages even if an
approved FAB ships its own copy (Flower's process would put the FAB first on
``sys.path``; the cold launcher has already imported Flower, NumPy and fedfhe's
packages before that, so only SciPy and scikit-learn differ).

The socket is only for this host's owner account: its folder is 0700, the socket
0600, and a peer of another uid is turned away (SO_PEERCRED).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

# What a ClientApp message needs, imported once. The ClientApp module itself is
# installed code (the FAB carries none); importing it here loads its dependencies.
PRELOAD = (
    "numpy",
    "scipy.optimize",
    "sklearn.linear_model",
    "sklearn.metrics",
    "fedfhe_owner.clientapp.clientapp_launcher",
    "fedfhe_owner.clientapp.client_app",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 5.0
FORKED = "ClientApp forked by the pre-imported server"  # logged per message; tests and operators grep for it


def say(line: str) -> None:
    print(f"fedfhe: {line}", file=sys.stderr, flush=True)


def native_threads() -> int:
    """Threads of this process as the kernel sees them (Python's and native libraries')."""
    return len(os.listdir("/proc/self/task"))


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import ``modules``; seconds taken. ``gc.freeze`` keeps them out of the children's collections."""
    start = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    gc.freeze()
    return time.perf_counter() - start


def bind(path: Path) -> socket.socket:
    """Listen on ``path`` (0600, in a 0700 folder), whatever its length (AF_UNIX allows 108 bytes)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{dirfd}/{path.name}"
        try:
            os.unlink(short)  # a stale socket of an earlier server
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(short)
        os.chmod(short, 0o600)
    finally:
        os.close(dirfd)
    listener.listen(64)
    return listener


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def read_request(conn: socket.socket) -> tuple[list[str], list[int]]:
    """The door's argument list and its three descriptors; ValueError if malformed (descriptors closed)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
    try:
        while not data.endswith(b"\n"):
            more = conn.recv(MAX_REQUEST)
            if not more or len(data) + len(more) > MAX_REQUEST:
                raise ValueError("request not terminated within 64 KiB")
            data += more
        argv = json.loads(data)
        if len(fds) != 3 or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("expected a JSON list of strings and three descriptors")
    except (ValueError, OSError):
        for fd in fds:
            os.close(fd)
        raise
    return argv, fds


def run_launcher(argv: list[str]) -> int:
    """The cold launcher's main, in this process; its exit code (Flower ends it with sys.exit)."""
    # lazy: preload() imports it (with numpy), once THREAD_VARIABLES cap the native thread pools
    from fedfhe_owner.clientapp import clientapp_launcher  # lazy: see above

    try:
        clientapp_launcher.main(argv)
    except SystemExit as ex:
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    return 0


def child(conn: socket.socket, listener: socket.socket, fds: list[int], argv: list[str], threads: int) -> NoReturn:
    """One message, in the forked child: become the door's process, run the launcher, report, exit."""
    code = 1
    try:
        listener.close()
        for target, fd in enumerate(fds):
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import numpy as np  # lazy: preload() imports it once THREAD_VARIABLES cap its threads

        np.random.seed()  # fresh entropy, as a new process would have
        sys.argv = ["flwr-clientapp", *argv]
        conn.sendall(f"pid {os.getpid()}\n".encode())
        say(f"{FORKED} {os.getppid()} (threads at fork: {threads})")
        code = run_launcher(argv)
    except BaseException:  # noqa: BLE001 - the child must always report and exit here
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            conn.sendall(f"exit {code}\n".encode())
        except OSError:
            pass
        os._exit(code)


def handle(listener: socket.socket) -> None:
    """Accept one door; fork a child for it, or answer why not."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        if peer_uid(conn) != os.getuid():
            say("ClientApp server: turned away a peer of another user")
            return
        try:
            argv, fds = read_request(conn)
        except (ValueError, OSError) as exc:
            say(f"ClientApp server: bad request: {exc}")
            return
        conn.settimeout(None)
        threads = native_threads()
        if threads != 1:
            conn.sendall(f"cold the ClientApp server has {threads} threads; forking could deadlock\n".encode())
            return
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            child(conn, listener, fds, argv, threads)
    finally:
        conn.close()
        for fd in fds:
            os.close(fd)


def reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(path: Path, parent_pid: int) -> int:
    """Pre-import, listen, fork per message; return once ``parent_pid`` (the SuperExec) is gone."""
    took = preload()
    threads = native_threads()
    listener = bind(path)
    say(f"ClientApp server {os.getpid()} ready on {path}: {len(PRELOAD)} modules pre-imported in {took:.1f} s, "
        f"{threads} thread(s)")
    if threads != 1:
        variables = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARIABLES)
        say(f"ClientApp server: {threads} threads after importing ({variables}); every message will start cold: "
            "set these variables to 1")
    while os.getppid() == parent_pid:
        ready, _, _ = select.select([listener], [], [], 0.5)
        reap()
        if ready:
            handle(listener)
    say(f"ClientApp server {os.getpid()}: the SuperExec ({parent_pid}) is gone; stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedfhe-ownerapp-server", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, required=True, help="stop when this process (the SuperExec) ends")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    return serve(args.socket, args.parent_pid)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
