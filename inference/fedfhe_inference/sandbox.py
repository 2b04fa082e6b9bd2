"""FHE worker processes: Concrete parses owners' keys and ciphertexts, and runs circuits, out of the node's process.

Concrete's C++ runtime trusts its input: a bad key or ciphertext can segfault, abort or spin. Here it
happens in a worker (``python -m fedfhe_inference.sandbox``) with an address-space limit (RLIMIT_AS)
and a CPU limit per job (RLIMIT_CPU's soft limit moved before each job: SIGXCPU ends it). The node
talks to a worker over its stdin/stdout pipes with length-prefixed frames of raw bytes (a count,
then each part's length and bytes); nothing is pickled. A worker that dies or overruns is killed and
replaced; the call fails with a message, other calls go on. Deserialized keys stay cached in each
worker (LRU within its share of ``key_cache_bytes``), so a warm Predict costs one pipe round trip.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import json
import logging
import os
import queue
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedfhe_common.contracts.fhe_wire import CircuitSpec, WireError
from fedfhe_common.runtime.logs import CUDA_NOTICE, import_quietly

from .confine import ConfinementError, confine

log = logging.getLogger("fedfhe.inference.sandbox")
_MAX_PART = 1 << 31
_MAX_PARTS = 16
MEMORY_PER_KEY_BYTE = 6.5  # as keystore.py: deserialized and prepared keys outgrow their bytes
PIPE_BYTES = 1 << 20  # /proc/sys/fs/pipe-max-size's default: what an unprivileged process may ask for
# glibc hands each large allocation its own fresh mmap and unmaps it on free, so every parse of an owner's keys
# faulted ~5x their size in new zeroed pages (95 000 faults, 0.2 s of kernel time for a tree's 77 MB: most of a
# key check). Workers keep freed memory in their heap instead and reuse it (measured: read and parse 0.45 s ->
# 0.07 s once warm). RLIMIT_AS still bounds the worker; its RSS stays at its peak rather than shrinking.
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"


class WorkerError(Exception):
    """A job did not produce an answer: ``kind`` is "crashed", "timeout", "cpu", "error", "mismatch" (bytes
    that do not fit the circuit, fhe_wire), "refused" (by Concrete) or "unconfined" (the kernel refused the
    worker's confinement: it never served);
    ``phase`` says whether the worker was loading keys or running the job."""

    def __init__(self, kind: str, message: str, phase: str = "run") -> None:
        super().__init__(message)
        self.kind, self.message, self.phase = kind, message, phase


def _refused(reply: list[bytes], phase: str) -> None:
    message = (reply[1] if len(reply) > 1 else b"").decode(errors="replace")
    kind = {b"error": "error", b"mismatch": "mismatch"}.get(reply[0] if reply else b"", "refused")
    raise WorkerError(kind, message, phase)


# ---- framing ---------------------------------------------------------------------------------------
def encode_frame(parts: list[bytes]) -> bytes:
    head = struct.pack("<I", len(parts)) + b"".join(struct.pack("<Q", len(p)) for p in parts)
    return head + b"".join(parts)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None) -> list[bytes]:
    """One frame from ``fd``: EOFError when the other side is gone, TimeoutError past ``deadline``."""
    (count,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
    if count > _MAX_PARTS:
        raise EOFError(f"frame of {count} parts")
    sizes = struct.unpack(f"<{count}Q", _read_exact(fd, 8 * count, deadline)) if count else ()
    if any(s > _MAX_PART for s in sizes):
        raise EOFError("frame part too large")
    return [_read_exact(fd, s, deadline) if s else b"" for s in sizes]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---- the worker ------------------------------------------------------------------------------------
class _Worker:
    """Inside the worker process: bundles and keys by path, checked against the circuit, then Concrete."""

    def __init__(self, cache_bytes: int, job_cpu_s: float) -> None:
        from concrete import fhe  # lazy: concrete-ml takes seconds to import
        from concrete.ml.deployment import FHEModelServer  # lazy: concrete-ml takes seconds to import

        from fedfhe_common.contracts.bundle import (
            CLIENT_ZIP,  # lazy: bundle pulls in numpy, whose threads must start after confine() (worker_main)
        )

        self.fhe, self.server_cls, self.spec_cls, self.client_zip = fhe, FHEModelServer, CircuitSpec, CLIENT_ZIP
        self.cache_bytes, self.job_cpu_s = cache_bytes, job_cpu_s
        self.servers: dict[str, Any] = {}
        self.specs: dict[str, Any] = {}
        self.keys: collections.OrderedDict[str, tuple[int, Any]] = collections.OrderedDict()
        self.cached = 0

    def spec(self, directory: str) -> Any:
        """The circuit's specs (milliseconds): all a key check needs."""
        if directory not in self.specs:
            self.specs[directory] = self.spec_cls.from_client_zip((Path(directory) / self.client_zip).read_bytes())
        return self.specs[directory]

    def server(self, directory: str) -> Any:
        """The circuit itself (about a second for a tree's server.zip): loaded on the first row, not for keys."""
        if directory not in self.servers:
            self.servers[directory] = self.server_cls(directory)
        return self.servers[directory]

    def evaluation_keys(self, directory: str, key_id: str, path: str) -> Any:
        entry = self.keys.get(key_id) if key_id else None
        if entry is not None:
            self.keys.move_to_end(key_id)
            return entry[1]
        data = Path(path).read_bytes()
        self.spec(directory).check_evaluation_keys(data)  # keys stored before these checks existed are checked too
        keys = self.fhe.EvaluationKeys.deserialize(data)
        cost = int(len(data) * MEMORY_PER_KEY_BYTE)
        if key_id and cost <= self.cache_bytes:  # an upload is checked under the id it will get: warm from then on
            self.keys[key_id] = (cost, keys)
            self.cached += cost
            while self.cached > self.cache_bytes:
                _, (size, _) = self.keys.popitem(last=False)
                self.cached -= size
        return keys

    def handle(self, parts: list[bytes]) -> list[bytes]:
        op = parts[0]
        if op == b"probe":
            return [b"ok", *probe(parts[1].decode(), parts[2].decode(), int(parts[3]))]
        if op == b"forget":
            entry = self.keys.pop(parts[1].decode(), None)
            if entry:
                self.cached -= entry[0]
            return [b"ok"]
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used + self.job_cpu_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        directory, key_id, path = (p.decode() for p in parts[1:4])
        if op == b"keys":
            self.evaluation_keys(directory, key_id, path)
            return [b"ok"]
        if op == b"run":
            server = self.server(directory)
            keys = self.evaluation_keys(directory, key_id, path)
            value = self.fhe.Value.deserialize(parts[4])
            result = server.run(value, keys)
            return [b"ok", result if isinstance(result, bytes) else result.serialize()]
        raise ValueError(f"unknown operation {op[:20]!r}")


def probe(path: str, host: str, port: int) -> list[bytes]:
    """What a job's code could do here: read ``path`` (the node's TLS key), reach ``host:port`` over TCP."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        read = b"open"
    except OSError as exc:
        read = f"refused: {exc.strerror}".encode()
    try:
        with socket.create_connection((host, port), timeout=2):
            net = b"open"
    except OSError as exc:
        net = f"refused: {exc.strerror or exc}".encode()
    return [read, net]


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker: confinement and limits first, then Concrete, then one frame in, one out, forever.

    Confinement comes before any import that starts a thread (NumPy's BLAS, torch, OpenMP): a user namespace
    can only be entered by a single-threaded process, and Landlock binds the calling thread and the threads it
    starts later, not threads that already run.
    """
    memory, cache_bytes, job_cpu_s = int(argv[0]), int(argv[1]), float(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node handles ^C and stops its workers
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the node
    except (OSError, AttributeError):
        pass
    rfd, wfd = sys.stdin.buffer.fileno(), os.dup(sys.stdout.buffer.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from libraries must not corrupt the frames
    if len(argv) > 3:  # the directories this worker may read; it writes only its TMPDIR

        try:
            confine(json.loads(argv[3]), [os.environ["TMPDIR"]])
        except (ConfinementError, KeyError, ValueError) as exc:
            _write_all(wfd, encode_frame([b"unconfined", str(exc).encode()[:1000]]))
            return 3
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    # The node's stderr is this worker's: torch's CUDA notice (meaningless for CPU-only FHE) must not land among
    # the node's --log-format json records; anything else the import says still goes there.
    for line in import_quietly("concrete.ml.deployment"):
        if not line.startswith(CUDA_NOTICE):
            print(line, file=sys.stderr)
    worker = _Worker(cache_bytes, job_cpu_s)
    _write_all(wfd, encode_frame([b"ready"]))
    while True:
        try:
            parts = read_frame(rfd)
        except EOFError:
            return 0
        try:
            reply = worker.handle(parts)
        except WireError as exc:  # not the circuit's layout: refused before Concrete saw a byte
            reply = [b"mismatch", str(exc).encode()[:1000]]
        except MemoryError:
            reply = [b"error", b"out of memory (the worker's memory limit)"]
        except Exception as exc:  # noqa: BLE001 - Concrete refuses bad input with RuntimeError and others
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            reply = [b"invalid", text.encode()]
        _write_all(wfd, encode_frame(reply))


# ---- the node's side -------------------------------------------------------------------------------
def _widen(fd: int) -> None:
    """Grow a pipe to hold a whole result (a digits row's is ~110 kB; the default 64 KiB pipe made the worker
    block half way and each row cost two more wake-ups of both processes). Best effort: the kernel may refuse."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:
        pass


# The only variables a worker inherits from the node: thread and allocator tuning. Nothing else of the node's
# environment (credentials, proxies, paths of its files) reaches a process that runs owners' bytes.
INHERITED = ("LANG", "LC_ALL", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
             "GLIBC_TUNABLES")


def worker_env(tmp: str) -> dict[str, str]:
    """A clean environment: the workers' malloc tunables (glibc reads them when the process starts) and ``tmp``
    (the worker's private directory) as TMPDIR and HOME.

    KMP_BLOCKTIME=0 (unless the operator set it): Concrete's OpenMP runtime (LLVM libomp) otherwise keeps its
    threads spinning 200 ms after each parallel region, so an idle worker burnt the cores the next job's
    worker (or the node's gRPC threads) needed.
    """
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), MALLOC_TUNABLES)))
    env.setdefault("KMP_BLOCKTIME", "0")
    return env | {"TMPDIR": tmp, "HOME": tmp, "PATH": "/usr/bin:/bin"}


class _Proc:
    def __init__(self, argv: list[str]) -> None:
        # Its own temporary directory (Concrete leaves two per circuit load): the only place it may write,
        # removed with it.
        self.tmp = tempfile.mkdtemp(prefix="fedfhe-worker-")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                     env=worker_env(self.tmp))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        for fd in (self.wfd, self.rfd):
            _widen(fd)
        self.ready = False
        self.loaded: set[bytes] = set()  # key ids this worker has loaded (it may evict them; it reloads then)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for fh in (self.proc.stdin, self.proc.stdout):
            try:
                fh.close()  # type: ignore[union-attr]
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def death(self) -> str:
        code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"


class SandboxPool:
    """``size`` workers; each job takes an idle one, a dead or overrunning one is replaced in the background."""

    def __init__(self, size: int, memory_bytes: int, cache_bytes: int, job_cpu_s: float,
                 start_timeout_s: float = 300.0, readable: list[str] | None = None) -> None:
        """``readable``: confine each worker (``confine``) to reading these directories besides its Python and
        system libraries; None runs workers unconfined."""
        self.size, self.job_cpu_s, self.start_timeout_s = size, job_cpu_s, start_timeout_s
        self.argv = [sys.executable, "-m", "fedfhe_inference.sandbox", str(memory_bytes),
                     str(max(0, cache_bytes // max(1, size))), str(job_cpu_s)]
        if readable is not None:
            self.argv.append(json.dumps([str(p) for p in readable]))
        # A stack: the worker that finished last runs the next job. Sequential calls stay on one warm worker
        # (its caches, page tables and OpenMP threads still hot) instead of alternating between all of them.
        self.idle: queue.LifoQueue[_Proc] = queue.LifoQueue()
        self.lock = threading.Lock()
        self.all: set[_Proc] = set()
        self.closed = False
        self.replaced = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        with self.lock:
            if self.closed:
                return
            proc = _Proc(self.argv)
            self.all.add(proc)
        self.idle.put(proc)

    def _retire(self, proc: _Proc) -> None:
        proc.kill()
        with self.lock:
            self.all.discard(proc)
            self.replaced += 1
        threading.Thread(target=self._spawn, name="sandbox-spawn", daemon=True).start()

    def call(self, parts: list[bytes], timeout: float, preload: list[bytes] | None = None) -> list[bytes]:
        """The worker's reply parts after "ok"; WorkerError otherwise (the worker is replaced if it failed).

        ``preload`` (a "keys" request) is sent first to a worker that has not loaded those keys yet, so a
        crash is pinned on the keys (phase "keys") or on the job (phase "run").
        """
        phase = "run"
        deadline = time.monotonic() + timeout
        try:
            proc = self.idle.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise WorkerError("timeout", f"no FHE worker became free within {timeout:.1f}s") from None
        try:
            if not proc.ready:  # a fresh worker imports Concrete first (seconds): not charged to the job's deadline
                hello = read_frame(proc.rfd, time.monotonic() + self.start_timeout_s)
                if hello[:1] == [b"unconfined"]:
                    self._retire(proc)
                    raise WorkerError("unconfined", f"the FHE worker could not be confined: "
                                      f"{hello[1].decode(errors='replace')}", "start")
                if hello != [b"ready"]:
                    raise EOFError
                proc.ready = True
                deadline = time.monotonic() + timeout
            if preload is not None and preload[2] not in proc.loaded:
                phase = "keys"
                _write_all(proc.wfd, encode_frame(preload))
                reply = read_frame(proc.rfd, deadline)
                if reply[:1] != [b"ok"]:
                    self.idle.put(proc)
                    _refused(reply, phase)
                proc.loaded.add(preload[2])
                phase = "run"
            _write_all(proc.wfd, encode_frame(parts))
            reply = read_frame(proc.rfd, deadline)
            if reply[:1] != [b"ok"]:
                self.idle.put(proc)
                _refused(reply, phase)
            if parts[0] == b"keys" and parts[2]:  # checked under the id it is about to get: this worker holds them
                proc.loaded.add(parts[2])
        except TimeoutError:
            self._retire(proc)
            raise WorkerError("timeout", f"the FHE worker did not answer within {timeout:.1f}s; it was replaced",
                              phase) from None
        except (EOFError, OSError, struct.error):
            if proc.proc.poll() is None:
                proc.proc.kill()
            why = proc.death()
            self._retire(proc)
            kind = "cpu" if "SIGXCPU" in why else "crashed"
            raise WorkerError(kind, f"the FHE worker {why}; it was replaced", phase) from None
        self.idle.put(proc)
        return reply[1:]

    def broadcast_forget(self, key_id: str) -> None:
        """Drop a key from every worker's cache (deleted or quarantined keys); best effort, idle workers only."""
        taken: list[_Proc] = []
        for _ in range(self.size):  # all first: the idle stack would hand the same worker back each time
            try:
                taken.append(self.idle.get_nowait())
            except queue.Empty:
                break
        for proc in reversed(taken):  # back in the same stack order
            try:
                if proc.ready:
                    _write_all(proc.wfd, encode_frame([b"forget", key_id.encode()]))
                    read_frame(proc.rfd, time.monotonic() + 10)
            except (TimeoutError, EOFError, OSError, struct.error):
                self._retire(proc)
                continue
            self.idle.put(proc)

    def pids(self) -> list[int]:
        with self.lock:
            return [p.proc.pid for p in self.all]

    def shutdown(self) -> None:
        with self.lock:
            self.closed = True
            procs = list(self.all)
        for proc in procs:
            try:
                proc.proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                proc.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            proc.kill()  # reaps it (or kills a worker that ignored its closed stdin) and removes its directory


if __name__ == "__main__":
    from fedfhe_common.runtime.exit_status import keep_exit_status

    try:
        sys.exit(worker_main(sys.argv[1:]))
    finally:
        keep_exit_status()
