"""The inference node's YAML config (inference.yaml), loaded into frozen dataclasses.

Example::

    listen: 0.0.0.0:50051
    certfile: pki/inference.crt      # server certificate (SANs = the names owners dial)
    keyfile: pki/inference.key
    ca_certfile: pki/ca.crt          # the project CA: client certificates must chain to it
    crl_file: pki/crl.pem            # optional: revoked owners (fedfhe-pki revoke); re-read on change/SIGHUP
    bundles_dir: /var/lib/fedfhe/bundles
    keys_dir: /var/lib/fedfhe/keys
    release_public_key: pki/release.pub   # bundles must be signed by the release key (no unsigned default)
    workers: 0                       # FHE worker processes; 0 = one per core
    metrics_address: 127.0.0.1:9464  # Prometheus metrics (plain HTTP, GET /metrics); "" = off
    limits: {max_batch_rows: 64, max_keys_per_owner: 8}
    deadlines: {predict_s: 300}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from fedfhe_common.runtime.config import HostPort, load_config
from fedfhe_common.runtime.errors import ConfigError

MiB = 1 << 20
MAX_SECONDS = 1e6  # gRPC takes milliseconds as a C int


@dataclass(frozen=True)
class Limits:
    """What one request may cost; each breach is a specific gRPC status, never a dead server."""

    max_chunk_bytes: int = 4 * MiB
    max_key_bytes: int = 512 * MiB
    max_batch_rows: int = 64
    max_ciphertext_bytes: int = 8 * MiB
    max_keys_per_owner: int = 8
    max_message_bytes: int = 64 * MiB
    max_concurrent_rpcs: int = 64
    # No stalls (limits.py): one owner holds at most this many RPC threads, whatever it sends or withholds.
    max_calls_per_owner: int = 4
    max_streams_per_owner: int = 2       # UploadKeys, health Watch, reflection
    # Refused calls per owner (refusals.py): a burst, then this many a second; beyond, refused at the door.
    refusals_per_owner_per_s: float = 2.0
    refusal_burst: int = 100
    message_idle_s: float = 30.0         # longest wait for any request message, the first one included
    # Stored evaluation keys (bytes on disk), counted at upload time with the uploads in progress.
    max_owner_key_bytes: int = 1024 * MiB
    max_stored_key_bytes: int = 8192 * MiB
    # Transport: keepalive pings find dead peers; idle and old connections are closed (GOAWAY).
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    connection_idle_s: float = 300.0
    connection_age_s: float = 3600.0
    connection_age_grace_s: float = 900.0  # calls in flight may finish; keep it >= deadlines.upload_s

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"limits.{f.name}: must be >= 1")
            if isinstance(getattr(self, f.name), float) and not getattr(self, f.name) <= MAX_SECONDS:
                raise ConfigError(f"limits.{f.name}: must be at most {MAX_SECONDS:.0f} (seconds)")
        if self.max_chunk_bytes + 64 * 1024 > self.max_message_bytes:
            raise ConfigError("limits.max_chunk_bytes: must be at least 64 KiB below limits.max_message_bytes")
        if self.max_streams_per_owner > self.max_calls_per_owner:
            raise ConfigError("limits.max_streams_per_owner: must be <= limits.max_calls_per_owner")
        if self.max_owner_key_bytes > self.max_stored_key_bytes:
            raise ConfigError("limits.max_owner_key_bytes: must be <= limits.max_stored_key_bytes")
        if self.keepalive_timeout_s >= self.keepalive_s:
            raise ConfigError("limits.keepalive_timeout_s: must be < limits.keepalive_s")


@dataclass(frozen=True)
class Deadlines:
    """Server-side ceilings per RPC, in seconds (a client's shorter deadline wins)."""

    predict_s: float = 600.0
    upload_s: float = 900.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ConfigError(f"deadlines.{f.name}: must be > 0")


@dataclass(frozen=True)
class KeyRegistryConfig:
    """inference.yaml's ``key_registry``: where the registry is and the certificates of the TLS link."""

    ca_certfile: Path
    certfile: Path
    keyfile: Path
    dsn: str = ""  # a libpq connection string; host/port/dbname/user below fill what it leaves out
    host: str = ""
    port: int = 5432
    dbname: str = "fedfhe"
    user: str = ""
    connect_timeout_s: int = 10

    def __post_init__(self) -> None:
        if not self.dsn and not (self.host and self.user):
            raise ConfigError("key_registry: give dsn, or host and user (the CN of key_registry.certfile)")
        if not 0 < self.port < 65536 or self.connect_timeout_s < 1:
            raise ConfigError("key_registry: port must be 1-65535 and connect_timeout_s >= 1")

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo  # lazy: optional dependency, only for a PostgreSQL key registry

        parts: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user}
        if self.dsn:  # what the DSN names wins over the defaults here, never over the TLS settings below
            from psycopg.conninfo import (
                conninfo_to_dict,  # lazy: optional dependency, only for a PostgreSQL key registry
            )

            given = conninfo_to_dict(self.dsn)
            parts = {k: v for k, v in parts.items() if k not in given and v}
            parts.update(given)
        parts = {k: v for k, v in parts.items() if v not in ("", None)}
        parts.update(sslmode="verify-full", sslrootcert=str(self.ca_certfile), sslcert=str(self.certfile),
                     sslkey=str(self.keyfile), connect_timeout=self.connect_timeout_s,
                     application_name="fedfhe-inference")
        return make_conninfo("", **parts)


@dataclass(frozen=True)
class InferenceConfig:
    listen: str
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    bundles_dir: Path
    keys_dir: Path
    # The release public key (release.pub): only bundles whose manifest it verifies are published or loaded.
    release_public_key: Path
    workers: int = 0
    rpc_threads: int = 16
    key_cache_bytes: int = 1024 * MiB
    rescan_interval_s: float = 30.0
    grace_s: float = 5.0
    pid_file: Path | None = None
    crl_file: Path | None = None      # the project CRL: revoked client certificates are refused
    allow_expired_crl: bool = False   # accept a CRL past its next update (else refused; the last good one stays)
    sandbox: bool = True              # Concrete parses and evaluates owners' bytes in worker processes
    # Workers in their own network namespace, held by Landlock to the files their jobs need (confine.py); the
    # node refuses to start when the kernel cannot. false: workers run with the node's network and files.
    confine_workers: bool = True
    # Evaluation keys nobody used for this long are deleted (owners upload again: UploadKeys); 0 = never. Keys
    # uploaded under a certificate the CRL revokes are deleted at the next rescan whatever this says.
    evict_idle_keys_s: float = 30 * 86400.0
    worker_memory_bytes: int = 8192 * MiB  # each worker's address-space limit (RLIMIT_AS)
    job_cpu_s: float = 300.0          # CPU seconds one worker job (a key load, a row) may use
    # Prometheus metrics over plain HTTP (metrics.py): keep it on localhost or a scrape-only network; "" = off.
    metrics_address: Annotated[str, HostPort(allow_empty=True)] = "127.0.0.1:9464"
    limits: Limits = field(default_factory=Limits)
    deadlines: Deadlines = field(default_factory=Deadlines)
    # The shared evaluation-key registry (key_registry.py); None (absent) = off, keys live in keys_dir only.
    key_registry: KeyRegistryConfig | None = None

    def __post_init__(self) -> None:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"listen: expected host:port, got {self.listen!r}")
        if self.workers < 0 or self.rpc_threads < 1:
            raise ConfigError("workers must be >= 0 (0 = one per core) and rpc_threads >= 1")
        if self.worker_memory_bytes < 256 * MiB or self.job_cpu_s <= 0:
            raise ConfigError("worker_memory_bytes must be >= 256 MiB and job_cpu_s > 0")
        if self.key_cache_bytes < 0 or self.rescan_interval_s < 0 or self.evict_idle_keys_s < 0:
            raise ConfigError("key_cache_bytes, rescan_interval_s and evict_idle_keys_s must be >= 0")

    @property
    def fhe_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def load(path: str | Path) -> InferenceConfig:
    return load_config(InferenceConfig, path)
