"""A whole federation on one machine: PKI, configs and real processes on loopback.

Used by `make demo` and the integration tests. Every process is started the
way an operator starts it (the fedfhe-coordinator / fedfhe-owner console scripts,
which exec flower-superlink / flower-supernode) and is stopped on close().
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psutil
import yaml

from fedfhe_common.pki.app_approval import app_dir_digest
from fedfhe_common.pki.ca import init_ca, issue, supernode_keypair, write_crl
from fedfhe_common.pki.release import make_release_key
from fedfhe_common.runtime.procs import free_port, port_open, venv_bin, wait_until
from fedfhe_coordinator.train.flwr_cli import flower_app_dir

from .inference_node import InferenceNode, spawn, write_config


@cache
def fedfhe_app_digest() -> str:
    """What an owner pins in approved_flower_apps: the digest `fedfhe-coordinator app-hash` prints."""
    return app_dir_digest(flower_app_dir())


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    work: Path
    host: str = "127.0.0.1"
    procs: list[Proc] = field(default_factory=list)
    # False pins plain mode on both sides (the coordinator's secure_aggregation.enabled false, each owner's
    # privacy.require_secure_aggregation false) unless a config call sets it; None keeps the defaults (SecAgg+
    # from three owners). Tests that are not about privacy pin plain mode: a SecAgg+ round costs ~15 s.
    secure: bool | None = None

    def __post_init__(self) -> None:
        self.work = self.work.resolve()
        self.pki = self.work / "pki"
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.fleet_port = free_port(self.host)
        self.control_port = free_port(self.host)

    # ---- PKI -------------------------------------------------------------
    def make_pki(self, owners: list[str]) -> None:
        init_ca(self.pki, exist_ok=True)
        issue(self.pki, "superlink", server_hosts=[self.host, "localhost"])
        issue(self.pki, "inference", server_hosts=[self.host, "localhost"])
        for owner in owners:
            issue(self.pki, owner, client=True)
            supernode_keypair(self.pki, owner)
        make_release_key(self.pki)  # compile and train sign with it; the node and the owners verify
        write_crl(self.pki)  # owners check the SuperLink's and the inference node's certificates against it

    # ---- configs ---------------------------------------------------------
    def coordinator_config(self, owners: list[str], **training: object) -> Path:
        cfg = {
            "state_dir": str(self.work / "coordinator"),
            "release_key": str(self.pki / "release.key"),
            "supernode_public_keys": [str(self.pki / f"{o}.supernode.pub") for o in owners],
            "metrics_address": f"{self.host}:{free_port()}",  # training metrics; clusters may run side by side
            "superlink": {
                "certfile": str(self.pki / "superlink.crt"),
                "keyfile": str(self.pki / "superlink.key"),
                "ca_certfile": str(self.pki / "ca.crt"),
                "fleet_address": f"{self.host}:{self.fleet_port}",
                "control_host": self.host,
                "control_port": self.control_port,
                "database": str(self.work / "coordinator" / "superlink.db"),
            },
            "training": {"output_dir": str(self.work / "training"), **training},
        }
        if self.secure is not None and "secure_aggregation" not in training:
            cfg["training"]["secure_aggregation"] = {"enabled": self.secure}
        path = self.work / "coordinator.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def owner_config(self, owner: str, data: Path, **extra: object) -> Path:
        cfg = {
            "owner_id": owner,
            "superlink": f"{self.host}:{self.fleet_port}",
            "root_certificates": str(self.pki / "ca.crt"),
            "auth_key": str(self.pki / f"{owner}.supernode.key"),
            "data": str(data),
            "state_dir": str(self.work / owner),
            "runtime_address": f"127.0.0.1:{free_port()}",
            "approved_flower_apps": [fedfhe_app_digest()],  # the owner runs only fedfhe's own app
            "release_public_key": str(self.pki / "release.pub"),
            "crl_file": str(self.pki / "crl.pem"),
            **extra,
        }
        if self.secure is False:
            cfg["privacy"] = {"require_secure_aggregation": False, **dict(extra.get("privacy") or {})}
        path = self.work / f"{owner}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    # ---- processes -------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.logs / f"{name}.log"
        proc = Proc(name, spawn(argv, log, env), log)
        self.procs.append(proc)
        return proc

    def start_superlink(self, config: Path, timeout: float = 60) -> Proc:
        proc = self.start("superlink", [venv_bin("fedfhe-coordinator"), "superlink", "--config", str(config)])
        wait_until(
            lambda: self._alive(proc) and port_open(f"{self.host}:{self.control_port}")
            and port_open(f"{self.host}:{self.fleet_port}"),
            timeout, f"SuperLink to listen (log {proc.log})",
        )
        return proc

    def start_inference(self, config: Path, owner: str, timeout: float = 120) -> InferenceNode:
        """`fedfhe-inference serve --config` (log logs/inference.log), stopped with the rest on close().

        Returns once gRPC health answers SERVING to ``owner``'s certificate (TimeoutError after ``timeout`` s).
        """
        node = InferenceNode(config, self.pki, owner, log=self.logs / "inference.log")
        self.procs.append(Proc("inference", node.launch(), node.log))
        node.wait_serving(timeout)
        return node

    def register(self, config: Path, keys: list[Path] | None = None) -> None:
        """`fedfhe-coordinator register`: SuperNodes must be registered before they start,
        or flower-supernode exits with code 305 ("Failed to activate SuperNode")."""
        argv = [venv_bin("fedfhe-coordinator"), "register", "--config", str(config)]
        for key in keys or []:
            argv += ["--key", str(key)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"fedfhe-coordinator register failed: {res.stderr.strip()}")

    def start_supernode(self, owner: str, config: Path) -> Proc:
        return self.start(f"supernode-{owner}", [venv_bin("fedfhe-owner"), "supernode", "--config", str(config)])

    def _alive(self, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            tail = proc.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log {proc.log}:\n{tail}")
        return True

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        self.stop_many([proc], sig, timeout)

    def stop_many(self, procs: list[Proc], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop processes and everything they started.

        Signals go to every process first, then we wait: Flower's graceful
        shutdown takes seconds per process. flower-superlink/-supernode start
        flower-superexec and flwr-serverapp in sessions of their own, so the
        process tree is snapshotted first and leftovers are killed by pid.
        """
        tree: list[psutil.Process] = []
        for proc in procs:
            try:
                tree += psutil.Process(proc.popen.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.popen.poll() is None:
                proc.popen.wait(5)
            if proc in self.procs:
                self.procs.remove(proc)
        for child in tree:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=5)

    def close(self) -> None:
        self.stop_many(list(reversed(self.procs)))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inference_config(cluster: Cluster, work: Path) -> Path:
    """work/inference.yaml: the node serves from work/inference on a free port of the cluster's host."""
    return write_config(work / "inference.yaml", cluster.pki, f"{cluster.host}:{free_port(cluster.host)}",
                        work / "inference", pid_file=str(work / "inference" / "inference.pid"))
