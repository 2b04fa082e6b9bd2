"""The one harness that starts an inference node, for the demo, the benches and the tests.

`fedfhe-inference serve --config ...` runs as a real subprocess (its own session,
stdout and stderr appended to its log) and is ready once the gRPC health service
answers SERVING over mutual TLS to a data owner's certificate, not merely once
its port is open: the node loads its bundles before it starts serving, so a
ready node serves every bundle published before it started.

`Cluster.start_inference` starts one beside the SuperLink and SuperNodes; the
benches and the tests make an `InferenceNode` of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import yaml

from fedfhe_common.pki.ca import init_ca, issue
from fedfhe_common.pki.release import make_release_key
from fedfhe_common.runtime.procs import free_port, port_open, venv_bin, wait_until
from fedfhe_owner.config import InferenceEndpoint
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, no stdin, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:  # the child holds its own descriptor
        return subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )


def make_inference_pki(directory: Path, owners: list[str] | tuple[str, ...],
                       hosts: tuple[str, ...] = ("127.0.0.1",)) -> Path:
    """The project CA, a release key, the node's server certificate for ``hosts``, a client one per owner."""
    init_ca(directory, exist_ok=True)
    make_release_key(directory)
    issue(directory, "inference", server_hosts=list(hosts))
    for owner in owners:
        issue(directory, owner, client=True)
    return directory


def write_config(path: Path, pki: Path, listen: str, state_dir: Path, **overrides: Any) -> Path:
    """An inference.yaml serving from ``state_dir``/bundles and ``state_dir``/keys with ``pki``'s certificates.

    ``overrides`` are further inference.yaml keys (limits, rescan_interval_s, pid_file, crl_file, ...).
    """
    cfg = {
        "listen": listen,
        "certfile": str(pki / "inference.crt"),
        "keyfile": str(pki / "inference.key"),
        "ca_certfile": str(pki / "ca.crt"),
        "bundles_dir": str(state_dir / "bundles"),
        "keys_dir": str(state_dir / "keys"),
        "release_public_key": str(pki / "release.pub"),
        # A free port of its own: nodes of concurrent tests and benches must not share the default 9464.
        "metrics_address": f"127.0.0.1:{free_port()}",
        **overrides,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class InferenceNode:
    """A `fedfhe-inference serve` subprocess and how to reach it.

    ``pki`` holds ca.crt, release.pub and each owner's ``<owner>.crt``/``.key``; ``owner`` is the
    certificate the health probe presents. Address, port and directories are read from the config
    (at each use, so a test may rewrite the config and start the node again).
    """

    def __init__(self, config: Path, pki: Path, owner: str, log: Path | None = None) -> None:
        self.config = Path(config)
        self.pki = Path(pki)
        self.owner = owner
        self.log = log or self.config.parent / "inference.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ---- what the config says ----------------------------------------------------------
    def _cfg(self) -> dict[str, Any]:
        return yaml.safe_load(self.config.read_text())

    @property
    def address(self) -> str:
        """Where a client on this machine reaches the node (a wildcard listen host becomes 127.0.0.1)."""
        host, _, port = str(self._cfg()["listen"]).rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def bundles_dir(self) -> Path:
        return Path(self._cfg()["bundles_dir"])

    @property
    def keys_dir(self) -> Path:
        return Path(self._cfg()["keys_dir"])

    # ---- the process -------------------------------------------------------------------
    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting (see wait_serving, wait_listening)."""
        self.proc = spawn([venv_bin("fedfhe-inference"), "serve", "--config", str(self.config)], self.log)
        self.starts += 1
        return self.proc

    def start(self, timeout: float = 120) -> InferenceNode:
        """Start the process and wait until it serves (TimeoutError after ``timeout`` s)."""
        self.launch()
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 120) -> None:
        wait_until(self.serving, timeout, f"fedfhe-inference to serve (log {self.log})", interval=0.2)

    def wait_listening(self, timeout: float = 60) -> None:
        """For a node whose certificate clients refuse (so health cannot answer): its log line and open port."""
        wait_until(lambda: self.alive() and "listening on" in self.log_text() and port_open(self.address),
                   timeout, f"fedfhe-inference to listen (log {self.log})")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the node is not running"
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        """True while the process runs; RuntimeError with its exit code and the log's tail once it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"fedfhe-inference exited ({code}); log {self.log}:\n{self.log_text()[-3000:]}")
        return True

    def serving(self) -> bool:
        """gRPC health Check over mutual TLS with ``owner``'s certificate says SERVING (raises if the node exited)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # lazy: grpc takes 0.2 s to import

        self.alive()
        with self.channel(self.owner) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the node drains), SIGKILL after ``timeout`` s; the exit code, or None if it was not started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> int | None:
        """SIGKILL (no drain, no clean-up) and reap."""
        assert self.proc is not None, "the node is not running"
        self.signal(signal.SIGKILL)
        self.proc.wait(30)
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> InferenceNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- its processes' memory -----------------------------------------------------------
    def worker_pids(self) -> list[int]:
        """The node's child processes (its sandboxed FHE workers)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return pids

    def status_mb(self, field: str, pid: int | None = None) -> float:
        """``field`` of /proc/PID/status (VmRSS, VmHWM, ...) in MiB, of the node or of ``pid``; 0 if it is gone."""
        try:
            text = Path(f"/proc/{pid or self.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    # ---- clients ---------------------------------------------------------------------------
    def endpoint(self, owner: str, **extra: Any) -> Any:
        """``owner``'s fedfhe_owner InferenceEndpoint for this node."""
        return InferenceEndpoint(
            address=self.address, certfile=self.pki / f"{owner}.crt", keyfile=self.pki / f"{owner}.key",
            ca_certfile=self.pki / "ca.crt", release_public_key=self.pki / "release.pub", **extra,
        )

    def channel(self, owner: str | None, pki: Path | None = None, max_bytes: int = 256 << 20) -> grpc.Channel:
        """A TLS channel presenting ``owner``'s certificate (from ``pki``, default the node's), or none at all."""
        d = pki or self.pki
        ca = (self.pki / "ca.crt").read_bytes()
        if owner is None:
            creds = grpc.ssl_channel_credentials(root_certificates=ca)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=(d / f"{owner}.key").read_bytes(),
                certificate_chain=(d / f"{owner}.crt").read_bytes(),
            )
        opts = [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]
        return grpc.secure_channel(self.address, creds, options=opts)

    def stub(self, owner: str | None, pki: Path | None = None) -> Any:
        """An Inference service stub on ``channel(owner, pki)``."""
        return pb_grpc.InferenceStub(self.channel(owner, pki))
