"""Assemble and run the gRPC server: mutual TLS, limits, health, reflection, reload on SIGHUP.

Signals reach the main loop through ``signal.set_wakeup_fd`` (a self-pipe),
so no lock is ever taken inside a signal handler: SIGHUP rescans the bundles
directory and re-reads the CRL (crl_file), SIGTERM/SIGINT drain in-flight RPCs and stop.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedfhe_common.pki.release import load_verify_key
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.fileio import write_atomic
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

from .bundles import BundleRegistry
from .config import InferenceConfig
from .display import install_log_filter
from .errors import RegistryError
from .identity import Identity
from .key_registry import KeyRegistry
from .keystore import KeyStore
from .limits import Guard, server_options
from .metrics import Metrics
from .runner import FheRunner
from .sandbox import SandboxPool, WorkerError
from .service import InferenceService

log = logging.getLogger("fedfhe.inference")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None


def server_credentials(cfg: InferenceConfig) -> grpc.ServerCredentials:
    """Mutual TLS: the client must present a certificate that chains to the project CA."""
    return grpc.ssl_server_credentials(
        [(_read(cfg.keyfile, "keyfile"), _read(cfg.certfile, "certfile"))],
        root_certificates=_read(cfg.ca_certfile, "ca_certfile"),
        require_client_auth=True,
    )


@dataclass
class Node:
    """A built, not yet started, inference node."""

    server: grpc.Server
    service: InferenceService
    health: health.HealthServicer
    registry: BundleRegistry
    runner: FheRunner
    port: int
    identity: Identity | None = None
    metrics: Metrics | None = None

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)


CRL_MARK = ".crl-number"  # in keys_dir (the node's private state): the newest CRL number accepted


def check_confinement(pool: SandboxPool, keyfile: Path) -> None:
    """Ask a worker to do what injected code would (read the TLS key, reach this host); start only if it can't."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        try:
            read, net = pool.call([b"probe", str(keyfile).encode(), b"127.0.0.1", str(port).encode()],
                                  timeout=pool.start_timeout_s)
        except WorkerError as exc:
            pool.shutdown()
            raise ConfigError(f"{exc.message}; set confine_workers: false to run FHE workers unconfined") from None
    finally:
        listener.close()
    if not (read.startswith(b"refused") and net.startswith(b"refused")):
        pool.shutdown()
        raise ConfigError(f"an FHE worker is not confined (reading {keyfile}: {read.decode()}; TCP to this host: "
                          f"{net.decode()}); refusing to start")
    log.info("FHE workers confined: reading %s %s, TCP to this host %s", keyfile, read.decode(), net.decode())


def build(cfg: InferenceConfig) -> Node:
    limits = cfg.limits

    registry = BundleRegistry(cfg.bundles_dir, load_verify_key(cfg.release_public_key))
    report = registry.rescan()
    log.info("bundles: %d loaded, %d refused", len(report.loaded), len(report.refused))
    key_registry = None
    if cfg.key_registry is not None:
        key_registry = KeyRegistry(cfg.key_registry)
        try:
            key_registry.ensure_schema()
        except RegistryError as exc:
            raise ConfigError(f"key_registry: {exc}") from None
        log.info("shared key registry: %s (TLS verify-full, client certificate %s)",
                 cfg.key_registry.host or "dsn", cfg.key_registry.certfile)
    keys = KeyStore(
        cfg.keys_dir, max_keys_per_owner=limits.max_keys_per_owner, max_key_bytes=limits.max_key_bytes,
        max_chunk_bytes=limits.max_chunk_bytes, cache_bytes=cfg.key_cache_bytes,
        max_owner_bytes=limits.max_owner_key_bytes, max_total_bytes=limits.max_stored_key_bytes,
        registry=key_registry,
    )
    pool = None
    if cfg.sandbox:
        readable = [str(registry.verified_root), str(cfg.keys_dir)] if cfg.confine_workers else None
        pool = SandboxPool(cfg.fhe_workers, cfg.worker_memory_bytes, cfg.key_cache_bytes, cfg.job_cpu_s,
                           readable=readable)
        if cfg.confine_workers:
            check_confinement(pool, cfg.keyfile)
        else:
            log.warning("confine_workers is false: FHE workers run with the node's network and can read its files, "
                        "the TLS key included")
    runner = FheRunner(cfg.fhe_workers, pool, job_s=cfg.job_cpu_s)
    metrics = Metrics(cfg.certfile)
    metrics.source("key_store", keys.usage)
    if key_registry is not None:
        metrics.enable_key_registry()
        keys.registry_event = metrics.registry_event
    metrics.source("bundles", registry.counts)
    metrics.source("bundle_versions", registry.versions)
    metrics.source("workers", lambda: (cfg.fhe_workers, pool.replaced if pool is not None else 0))
    service = InferenceService(cfg, registry, keys, runner, metrics)
    identity = Identity.from_file(cfg.ca_certfile, cfg.crl_file, cfg.allow_expired_crl, cfg.keys_dir / CRL_MARK)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.rpc_threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *server_options(limits),
        ],
        # Every method of every service (health and reflection too): identity, owner slots, idle timeouts.
        interceptors=[Guard(identity, limits, metrics)],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    if limits.max_calls_per_owner >= cfg.rpc_threads:
        log.warning("limits.max_calls_per_owner (%d) >= rpc_threads (%d): one owner can occupy every RPC thread",
                    limits.max_calls_per_owner, cfg.rpc_threads)
    pb_grpc.add_InferenceServicer_to_server(service, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    try:
        port = server.add_secure_port(cfg.listen, server_credentials(cfg))
    except RuntimeError as exc:
        raise ConfigError(f"listen {cfg.listen}: cannot bind: {exc}") from None
    if port == 0:
        raise ConfigError(f"listen {cfg.listen}: cannot bind (address in use or not local)")
    return Node(server, service, health_servicer, registry, runner, port, identity, metrics)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_heap() -> bool:
    """The node's own process keeps freed memory in its heap and reuses it, as its FHE workers do (sandbox.py).

    A key upload arrives as ~74 one-MiB messages; glibc served each of their buffers (gRPC's, the parsed
    message's, the chunk's bytes) from a fresh mmap, faulted its pages in and unmapped it again: ~15 ms of a
    77 MB upload's receive (0.136 -> 0.120 s). mallopt at start-up, since glibc reads GLIBC_TUNABLES only when
    the process starts; an operator's own glibc.malloc tunables are left alone. False where there is no glibc.
    """
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def serve(cfg: InferenceConfig) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP (or every rescan_interval_s) picks up newly published bundles."""
    install_log_filter()  # owners' values (names, ids) reach log lines: one escaped line per record
    keep_heap()
    node = build(cfg)
    metrics_port = node.metrics.serve(cfg.metrics_address) if cfg.metrics_address and node.metrics else None
    rfd, wfd = socket.socketpair()
    rfd.setblocking(False)
    wfd.setblocking(False)
    old_fd = signal.set_wakeup_fd(wfd.fileno(), warn_on_full_buffer=False)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda *_: None) for s in handled}
    node.server.start()
    node.set_serving(True)
    if cfg.pid_file:
        write_atomic(cfg.pid_file, f"{os.getpid()}\n".encode())
    log.info("fedfhe-inference listening on %s (mutual TLS, %d FHE workers, pid %d)",
             cfg.listen.rsplit(":", 1)[0] + f":{node.port}", cfg.fhe_workers, os.getpid())
    if metrics_port is not None:
        log.info("Prometheus metrics on http://%s:%d/metrics", cfg.metrics_address.rsplit(":", 1)[0], metrics_port)
    try:
        while True:
            ready, _, _ = select.select([rfd], [], [], cfg.rescan_interval_s or None)
            signals = set(rfd.recv(64)) if ready else set()
            if signals & {signal.SIGTERM, signal.SIGINT}:
                log.info("stopping: draining in-flight RPCs for up to %.0fs", cfg.grace_s)
                break
            if signals and signal.SIGHUP not in signals:
                continue
            if signal.SIGHUP in signals and node.identity is not None:
                node.identity.reload()
            node.service.evict_keys(node.identity.revoked() if node.identity is not None else frozenset(),
                                    cfg.evict_idle_keys_s)
            report = node.registry.rescan()
            if report.loaded or report.removed or report.refused:
                log.info("rescan: loaded %s, removed %s, refused %d", report.loaded, report.removed,
                         len(report.refused))
    finally:
        node.set_serving(False)
        node.server.stop(cfg.grace_s).wait()
        node.runner.shutdown()
        if node.metrics is not None:
            node.metrics.stop()
        signal.set_wakeup_fd(old_fd)
        for s, h in previous.items():
            signal.signal(s, h)
        rfd.close()
        wfd.close()
        if cfg.pid_file:
            cfg.pid_file.unlink(missing_ok=True)
    return 0
