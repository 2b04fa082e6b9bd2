"""The shared evaluation-key registry (PostgreSQL): keys an owner uploaded once, usable through every node.

Off unless inference.yaml has a ``key_registry`` section::

    key_registry:
      host: keys-db.example.org     # or dsn: "host=... port=... dbname=... user=..."
      port: 5432
      dbname: fedfhe
      user: fedfhe-registry         # the CN of certfile: the server's pg_hba says "cert clientcert=verify-full"
      ca_certfile: pki/ca.crt       # the project CA: the server's certificate must chain to it
      certfile: pki/fedfhe-registry.crt
      keyfile: pki/fedfhe-registry.key

The link is always ``sslmode=verify-full`` with the node's client certificate (a DSN cannot weaken it: the TLS
settings are appended last). Two tables: ``fedfhe_keys`` (one row per key set: owner, model, versions served,
the certificates that uploaded or attached it, the key-parameter fingerprint, SHA-256, size, creation time)
and ``fedfhe_key_chunks`` (the serialized keys in 4 MiB bytea rows, deleted with their key set). A tree's
77 MB of keys thus go in and out chunk by chunk, streamed from and to a file: never whole in memory, and a
row never near PostgreSQL's 1 GB field limit. Upload and its chunks are one transaction: another node sees a
key set whole or not at all. Attaching and detaching versions are single UPDATEs, so two nodes changing the
same key set at once do not lose each other's change.

Every failure to reach or use the database is a ``RegistryError``; the node answers UNAVAILABLE (it does not
fall back to its local copy: a key deleted through another node must not be served here).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fedfhe_common.runtime.errors import ConfigError

from .config import KeyRegistryConfig
from .errors import RegistryError
from .keystore import KeyRecord

log = logging.getLogger("fedfhe.inference.registry")
CHUNK_BYTES = 4 << 20
_IDLE_CONNECTIONS = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS fedfhe_keys (
    key_id text PRIMARY KEY,
    owner text NOT NULL,
    model_id text NOT NULL,
    version text NOT NULL,
    served text[] NOT NULL,
    serial text NOT NULL DEFAULT '',
    attach_serials text[] NOT NULL DEFAULT '{}',
    key_params_sha256 text NOT NULL DEFAULT '',
    sha256 text NOT NULL,
    size bigint NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS fedfhe_keys_owner ON fedfhe_keys (owner);
CREATE TABLE IF NOT EXISTS fedfhe_key_chunks (
    key_id text NOT NULL REFERENCES fedfhe_keys (key_id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (key_id, seq)
);
"""
_COLUMNS = ("key_id, owner, model_id, version, served, serial, attach_serials, key_params_sha256, sha256, size, "
            "created_at")
_SCHEMA_LOCK = 0x66656466  # pg_advisory_xact_lock: nodes starting together create the tables once


def _record(row: tuple[Any, ...]) -> KeyRecord:
    (key_id, owner, model_id, version, served, serial, attach_serials, key_params, sha256, size, created) = row
    return KeyRecord(key_id, owner, model_id, version, int(size), sha256, float(created), serial, key_params,
                     tuple(served), tuple(attach_serials))


class KeyRegistry:
    """The registry's operations; thread-safe (a few idle connections kept, one per call in use)."""

    def __init__(self, cfg: KeyRegistryConfig) -> None:
        try:
            import psycopg  # noqa: F401  # lazy: optional extra fedfhe-inference[registry], reported missing below
        except ImportError:
            raise ConfigError("key_registry needs psycopg: pip install 'fedfhe-inference[registry]'") from None
        for name in ("ca_certfile", "certfile", "keyfile"):
            if not Path(getattr(cfg, name)).is_file():
                raise ConfigError(f"key_registry.{name}: {getattr(cfg, name)}: file not found")
        self.cfg = cfg
        self._conninfo = cfg.conninfo()
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    # ---- connections ----------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        import psycopg  # lazy: optional dependency, only for a PostgreSQL key registry

        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(self._conninfo, autocommit=True)
            yield conn
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            log.error("key registry: %s", reason)
            raise RegistryError(f"the shared key registry failed: {reason}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        with self._lock:
            if len(self._idle) < _IDLE_CONNECTIONS and not conn.closed:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def ensure_schema(self) -> None:
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA)

    # ---- operations -----------------------------------------------------
    def put(self, record: KeyRecord, path: Path) -> None:
        """Store a key set the node accepted (its metadata and the bytes of ``path``), all or nothing."""
        with self._conn() as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO fedfhe_keys ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (record.key_id, record.owner, record.model_id, record.version, list(record.versions), record.serial,
                 list(record.attach_serials), record.key_params_sha256, record.sha256, record.size,
                 record.created_at))
            with open(path, "rb") as fh, conn.cursor() as cur:
                seq = 0
                while chunk := fh.read(CHUNK_BYTES):
                    cur.execute("INSERT INTO fedfhe_key_chunks (key_id, seq, data) VALUES (%s, %s, %b)",
                                (record.key_id, seq, chunk))
                    seq += 1

    def get(self, key_id: str) -> KeyRecord | None:
        """The key set's record (no bytes: one indexed row), or None if the registry has none."""
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM fedfhe_keys WHERE key_id = %s", (key_id,)).fetchone()
        return None if row is None else _record(row)

    def fetch(self, record: KeyRecord, out: IO[bytes]) -> bool:
        """Write the key set's bytes to ``out`` chunk by chunk; False if they are not (all) there or do not
        match the record's size and SHA-256 (deleted meanwhile, or damaged)."""
        digest, size = hashlib.sha256(), 0
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM fedfhe_key_chunks WHERE key_id = %s", (record.key_id,))
            chunks = cur.fetchone()[0]
            for seq in range(chunks):
                cur.execute("SELECT data FROM fedfhe_key_chunks WHERE key_id = %s AND seq = %s",
                            (record.key_id, seq), binary=True)
                row = cur.fetchone()
                if row is None:
                    return False
                data = bytes(row[0])
                digest.update(data)
                size += len(data)
                out.write(data)
        return size == record.size and digest.hexdigest() == record.sha256

    def delete(self, key_id: str) -> bool:
        """Delete the key set and its bytes; False if the registry had none."""
        with self._conn() as conn:
            return conn.execute("DELETE FROM fedfhe_keys WHERE key_id = %s RETURNING key_id",
                                (key_id,)).fetchone() is not None

    def owned(self, owner: str) -> dict[str, int]:
        """Key id -> bytes of every key set ``owner`` holds in the registry (the per-owner quotas)."""
        with self._conn() as conn:
            rows = conn.execute("SELECT key_id, size FROM fedfhe_keys WHERE owner = %s", (owner,)).fetchall()
        return {key_id: int(size) for key_id, size in rows}

    def attach(self, key_id: str, version: str, serial: str) -> KeyRecord | None:
        """Add ``version`` to the versions served (and ``serial`` to the attaching certificates), atomically."""
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE fedfhe_keys SET "
                "served = CASE WHEN %(v)s = ANY(served) THEN served ELSE array_append(served, %(v)s) END, "
                "attach_serials = CASE WHEN %(s)s = '' OR %(s)s = serial OR %(s)s = ANY(attach_serials) "
                "THEN attach_serials ELSE array_append(attach_serials, %(s)s) END "
                f"WHERE key_id = %(k)s RETURNING {_COLUMNS}", {"v": version, "s": serial, "k": key_id}).fetchone()
        return None if row is None else _record(row)

    def detach(self, key_id: str, version: str) -> tuple[KeyRecord | None, bool]:
        """Remove ``version``; the key set goes with its last version. (record after, deleted)."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(f"UPDATE fedfhe_keys SET served = array_remove(served, %s) WHERE key_id = %s "
                               f"RETURNING {_COLUMNS}", (version, key_id)).fetchone()
            if row is None:
                return None, False
            record = _record(row)
            if record.served:
                return record, False
            conn.execute("DELETE FROM fedfhe_keys WHERE key_id = %s", (key_id,))
            return record, True
