"""Uploaded evaluation keys: on disk atomically, owned by one certificate CN, surviving restarts.

Layout: ``keys_dir/<key_id>.evk`` (the serialized evaluation keys) and
``keys_dir/<key_id>.json`` (owner, model versions served, size, SHA-256). One key set serves
every version of its model it was attached to (``attach``: circuits that need the same key
set; a tree's keys are tens of MB) and goes with the last one (``detach``). Key ids are
server-generated uuid4 hex and checked against that pattern before they touch
a path. An upload streams into a temp file (fsync, rename), so a crash never
leaves a half key under a valid id; leftovers are swept at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from fedfhe_common.runtime.fileio import write_atomic

from .errors import RegistryError, ServiceError, denied, exhausted, invalid, not_found
from .fair import FairGate, SlotTimeout
from .runner import framing_error

log = logging.getLogger("fedfhe.inference.keys")
KEY_ID = re.compile(r"^[0-9a-f]{32}$")
# Deserialized keys take more memory than their bytes once Concrete has prepared them for execution
# (measured: a tree's 77 MB of keys hold ~480 MB after the first run). The cache budget counts that.
MEMORY_PER_KEY_BYTE = 6.5
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"[0-9a-f]{1,64}")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def _disk_space(what: str) -> Iterator[None]:
    """A full disk (or quota) while writing keys is the node's limit, not a bug: RESOURCE_EXHAUSTED."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        log.error("key store out of space while %s: %s", what, exc)
        raise exhausted(
            f"the inference node's key store is out of disk space ({os.strerror(exc.errno)}) while {what}; "
            "nothing was stored: retry later, the node's operator must free space"
        ) from None


TOUCH_EVERY_S = 3600.0  # how stale a key's persisted last use may get (idle eviction works in days)


def check_key_id(key_id: str) -> str:
    """Only what the server itself hands out: 32 lowercase hex digits (no paths, no dots)."""
    if not KEY_ID.fullmatch(key_id or ""):  # fullmatch: "$" would let a trailing newline in
        raise invalid(f"key id {key_id[:80]!r} is malformed: expected the 32 hex digits UploadKeys returned")
    return key_id


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    owner: str
    model_id: str
    version: str  # the version they were uploaded for
    size: int
    sha256: str
    created_at: float
    serial: str = ""  # hex serial of the client certificate that uploaded them: revoking it deletes them
    # fingerprint of the key set they were checked against (fedfhe_common.contracts.key_params)
    key_params_sha256: str = ""
    served: tuple[str, ...] = ()  # versions of model_id they serve; () before key sharing: (version,)
    attach_serials: tuple[str, ...] = ()  # certificates that attached versions: revoking one deletes them too

    @classmethod
    def from_dict(cls, data: Any) -> KeyRecord:
        """A record as ``to_json`` wrote it (or as nodes before key sharing did); TypeError/ValueError otherwise."""
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        fields = {**data}
        for name in ("served", "attach_serials"):
            value = fields.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} is not a list of strings")
            fields[name] = tuple(value)
        serials = [*fields["attach_serials"], *([fields["serial"]] if fields.get("serial") else [])]
        if not all(isinstance(s, str) and _HEX.fullmatch(s) for s in serials):
            raise ValueError("a certificate serial is not hex")
        return cls(**fields)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @property
    def versions(self) -> tuple[str, ...]:
        return self.served or (self.version,)

    def serves(self, model_id: str, version: str) -> bool:
        return model_id == self.model_id and version in self.versions

    @property
    def serials(self) -> tuple[str, ...]:
        """Every certificate that uploaded or attached these keys (those of before serials were kept: none)."""
        return tuple(s for s in (self.serial, *self.attach_serials) if s)


def _deserialize(data: bytes) -> Any:
    from concrete import fhe  # lazy: concrete-ml takes seconds to import

    return fhe.EvaluationKeys.deserialize(data)


class _Upload:
    """One in-flight key stream: bytes go straight to a temp file, hashed on the way."""

    def __init__(self, store: KeyStore, owner: str, model_id: str, version: str, total: int, sha256: str,
                 serial: str = "", key_params_sha256: str = "") -> None:
        self.store, self.owner, self.model_id, self.version, self.serial = store, owner, model_id, version, serial
        self.key_params_sha256 = key_params_sha256
        self.total, self.expected_sha256 = total, sha256
        self.received = 0
        self.hash = hashlib.sha256()
        with _disk_space("receiving evaluation keys"):
            fd, tmp = tempfile.mkstemp(dir=store.root, prefix=".upload-", suffix=".part")
        os.fchmod(fd, 0o600)
        self.path = Path(tmp)
        self.fh = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        limit = self.store.max_chunk_bytes
        if len(chunk) > limit:
            raise invalid(f"key chunk of {len(chunk)} bytes exceeds the {limit}-byte chunk limit")
        if self.received + len(chunk) > self.total:
            raise invalid(f"key stream is longer than the {self.total} bytes its header declared")
        with _disk_space("receiving evaluation keys"):
            self.fh.write(chunk)
        self.hash.update(chunk)
        self.received += len(chunk)

    def commit(self, validate: Callable[[Path, str], Any] | None = None, deadline: float | None = None) -> KeyRecord:
        """Check completeness, hash and that the bytes are evaluation keys; then rename into place.

        ``validate(path, key_id)`` (the node's: the circuit check and Concrete's parse, in a worker when
        sandboxed) replaces the in-process parse; it returns the parsed keys if they live in this process.
        The file is fsynced while it runs (both take a while for a tree's 77 MB), and the key id exists
        only once both succeeded: no id for keys Concrete refused, none for bytes not yet on disk.
        One check runs at a time (each holds the bytes and their parse), in owners' turns; ``deadline``
        (time.monotonic) bounds the wait for that turn.
        """
        if self.received < self.total:
            raise invalid(f"key stream truncated: received {self.received} of the {self.total} declared bytes")
        digest = self.hash.hexdigest()  # hashed while streaming: no second pass over the bytes
        if digest != self.expected_sha256:
            raise ServiceError(
                grpc.StatusCode.DATA_LOSS,
                f"key stream SHA-256 {digest} does not match the header's {self.expected_sha256}",
            )
        with _disk_space("receiving evaluation keys"):
            self.fh.flush()
        key_id = uuid.uuid4().hex
        synced: list[BaseException | None] = []

        def fsync() -> None:
            try:
                os.fsync(self.fh.fileno())
                synced.append(None)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the RPC thread below
                synced.append(exc)

        syncer = threading.Thread(target=fsync, name="keys-fsync", daemon=True)
        syncer.start()
        try:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                with self.store.validation_gate.slot(self.owner, wait):
                    keys = validate(self.path, key_id) if validate is not None else self._parse()
            except SlotTimeout:
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"the keys were received but not checked within the upload's deadline ({wait:.1f} "
                                   "s left): other owners' keys are being checked; upload again") from None
        finally:
            syncer.join()
        with _disk_space("receiving evaluation keys"):
            if synced and synced[0] is not None:
                raise synced[0]
            self.fh.close()
        record = KeyRecord(key_id, self.owner, self.model_id, self.version, self.received, digest, time.time(),
                           self.serial, self.key_params_sha256, (self.version,))
        self.store._install(record, self.path, keys)
        self.store._publish(record)
        return record

    def _parse(self) -> Any:
        """Without a validator (tests, tools): the framing check, then Concrete's parse in this process."""
        data = self.path.read_bytes()
        reason = framing_error(data)
        if reason:
            raise invalid(f"the uploaded bytes are not Concrete evaluation keys: {reason}")
        try:
            return _deserialize(data)
        except Exception as exc:  # noqa: BLE001 - Concrete's parser rejects bad bytes in several ways
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise invalid(f"the uploaded bytes are not Concrete evaluation keys: {reason}") from None

    def discard(self) -> None:
        if not self.fh.closed:
            try:
                self.fh.close()
            except OSError:
                pass  # e.g. ENOSPC flushing what is left in the buffer: the file goes anyway
        self.path.unlink(missing_ok=True)


class KeyStore:
    """Key records by id, per-owner quotas, and an LRU of deserialized keys bounded in bytes."""

    def __init__(self, root: Path, *, max_keys_per_owner: int, max_key_bytes: int, max_chunk_bytes: int,
                 cache_bytes: int, max_owner_bytes: int | None = None, max_total_bytes: int | None = None,
                 registry: Any = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.max_keys_per_owner = max_keys_per_owner
        self.max_key_bytes = max_key_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.cache_bytes = cache_bytes
        self.max_owner_bytes = max_owner_bytes  # None: no cap (stored + in-progress uploads, per owner)
        self.max_total_bytes = max_total_bytes  # None: no cap (the whole store)
        # One key check at a time (memory: each holds the bytes and their parse), handed to owners in turn:
        # one owner's queue of uploads delays another's by at most one check.
        self.validation_gate = FairGate(1)
        self._records: dict[str, KeyRecord] = {}
        self._quarantined: dict[str, str] = {}  # key id -> why (a <key_id>.quarantine file each)
        self._pending: dict[str, int] = {}
        self._pending_bytes: dict[str, int] = {}
        self._cache: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._cached = 0
        self._used: dict[str, float] = {}  # key id -> last use (wall clock); the .evk's mtime across restarts
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._meta_lock = threading.RLock()  # a record's read-modify-write (attach, detach) against its delete
        # The shared key registry (key_registry.KeyRegistry) or None: keys_dir is then the only store. With one,
        # the registry is the truth and keys_dir a checked local copy of what this node served (see current()).
        self.registry = registry
        self.registry_event: Callable[[str], None] = lambda event: None  # "hit", "miss", "load" (the metrics)
        self._load_index()

    # ---- start-up -------------------------------------------------------
    def _load_index(self) -> None:
        for part in self.root.glob(".upload-*.part"):
            part.unlink(missing_ok=True)  # an upload interrupted by a crash or restart
        for meta in self.root.glob("*.json"):
            try:
                record = KeyRecord.from_dict(json.loads(meta.read_text()))
                check_key_id(record.key_id)
                if meta.stem != record.key_id or not (self.root / f"{record.key_id}.evk").is_file():
                    raise ValueError("metadata and key file do not match")
            except (ValueError, TypeError, ServiceError, OSError) as exc:
                log.error("ignoring key metadata %s: %s", meta, exc)
                continue
            self._records[record.key_id] = record
            self._used[record.key_id] = (self.root / f"{record.key_id}.evk").stat().st_mtime
        for evk in self.root.glob("*.evk"):
            if evk.stem not in self._records:
                evk.unlink(missing_ok=True)  # a delete or an install interrupted half way
        for mark in self.root.glob("*.quarantine"):
            if mark.stem in self._records:
                self._quarantined[mark.stem] = mark.read_text(errors="replace")
            else:
                mark.unlink(missing_ok=True)
        log.info("key store %s: %d evaluation key sets", self.root, len(self._records))

    # ---- lookups --------------------------------------------------------
    def get(self, key_id: str, owner: str, usable: bool = True) -> KeyRecord:
        check_key_id(key_id)
        with self._lock:
            record = self._records.get(key_id)
            quarantined = self._quarantined.get(key_id)
        if record is None:
            raise not_found(f"no evaluation keys with id {key_id}; upload them again (UploadKeys)")
        if record.owner != owner:
            raise denied(f"evaluation keys {key_id} belong to another owner")
        if usable and quarantined is not None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"evaluation keys {key_id} are quarantined ({quarantined[:300]}); "
                               "delete them and upload new keys")
        return record

    def key_path(self, record: KeyRecord) -> Path:
        return self.root / f"{record.key_id}.evk"

    def quarantine(self, key_id: str, reason: str) -> None:
        """Keys that crashed or stalled an FHE worker: refused from now on, also after a restart."""
        with self._lock:
            if key_id not in self._records:
                return
            self._quarantined[key_id] = reason
            entry = self._cache.pop(key_id, None)
            if entry:
                self._cached -= entry[0]
        write_atomic(self.root / f"{key_id}.quarantine", reason.encode()[:2000], 0o600)
        log.error("quarantined evaluation keys %s: %s", key_id, reason[:300])

    def usage(self) -> tuple[int, int, int]:
        """(bytes stored, key sets, of which quarantined), for the metrics."""
        with self._lock:
            return sum(r.size for r in self._records.values()), len(self._records), len(self._quarantined)

    def owned_by(self, owner: str) -> list[KeyRecord]:
        with self._lock:
            return [r for r in self._records.values() if r.owner == owner]

    # ---- upload ---------------------------------------------------------
    @contextlib.contextmanager
    def upload(self, owner: str, model_id: str, version: str, total: int, sha256: str,
               serial: str = "", key_params_sha256: str = "") -> Iterator[_Upload]:
        """Reserve a quota slot for the stream; the temp file is removed unless commit() succeeded."""
        if total < 1:
            raise invalid("UploadHeader.total_bytes must be > 0")
        if total > self.max_key_bytes:
            raise exhausted(f"evaluation keys of {total} bytes exceed this node's {self.max_key_bytes}-byte limit")
        if not SHA256_HEX.fullmatch(sha256 or ""):
            raise invalid("UploadHeader.sha256 must be 64 lowercase hex digits")
        remote = self._remote(self.registry.owned, owner) if self.registry is not None else {}
        with self._lock:
            used = len(self._owner_sets(owner, remote)) + self._pending.get(owner, 0)
            if used >= self.max_keys_per_owner:
                raise exhausted(
                    f"owner {owner} already holds {used} key sets (limit {self.max_keys_per_owner}); delete unused ones"
                )
            self._check_space(owner, total, remote)
            self._pending[owner] = self._pending.get(owner, 0) + 1
            self._pending_bytes[owner] = self._pending_bytes.get(owner, 0) + total
        try:
            up = _Upload(self, owner, model_id, version, total, sha256, serial, key_params_sha256)
            try:
                yield up
            finally:
                up.discard()
        finally:
            with self._lock:
                self._pending[owner] -= 1
                self._pending_bytes[owner] -= total

    def _owner_sets(self, owner: str, remote: dict[str, int]) -> dict[str, int]:
        """Key id -> bytes of the owner's key sets: here and (``remote``) in the registry (caller holds the lock)."""
        return {**{r.key_id: r.size for r in self._records.values() if r.owner == owner}, **remote}

    def _check_space(self, owner: str, total: int, remote: dict[str, int] | None = None) -> None:
        """Byte caps per owner and node-wide, counting uploads in progress (caller holds the lock).

        Refusing here, before a byte is written, leaves everything already stored as it was. ``remote``: the
        owner's key sets in the registry (id -> bytes), counted with those here for the per-owner cap.
        """
        if self.max_owner_bytes is not None:
            mine = sum(self._owner_sets(owner, remote or {}).values()) + self._pending_bytes.get(owner, 0)
            if mine + total > self.max_owner_bytes:
                raise exhausted(
                    f"owner {owner} holds {mine} bytes of evaluation keys; {total} more would exceed the per-owner "
                    f"limit of {self.max_owner_bytes} bytes (limits.max_owner_key_bytes): delete unused keys first"
                )
        if self.max_total_bytes is not None:
            stored = sum(r.size for r in self._records.values()) + sum(self._pending_bytes.values())
            if stored + total > self.max_total_bytes:
                raise exhausted(
                    f"the node's key store holds {stored} bytes; {total} more would exceed its limit of "
                    f"{self.max_total_bytes} bytes (limits.max_stored_key_bytes): retry later or ask the operator"
                )

    def _install(self, record: KeyRecord, part: Path, keys: Any) -> None:
        final, meta = self.root / f"{record.key_id}.evk", self.root / f"{record.key_id}.json"
        try:
            with _disk_space("storing evaluation keys"):
                os.replace(part, final)
                write_atomic(meta, record.to_json(), 0o600)
                fd = os.open(self.root, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except BaseException:
            meta.unlink(missing_ok=True)  # metadata first, as in delete(): never a record without its keys
            final.unlink(missing_ok=True)
            raise
        with self._lock:
            self._records[record.key_id] = record
            self._used[record.key_id] = time.time()
        self._remember(record, keys)

    def touch(self, record: KeyRecord) -> None:
        """A use: keeps the keys from idle eviction. Written to the .evk's mtime at most hourly (restarts keep it)."""
        now = time.time()
        with self._lock:
            before = self._used.get(record.key_id, 0.0)
            self._used[record.key_id] = now
        if now - before > TOUCH_EVERY_S:
            with contextlib.suppress(OSError):
                os.utime(self.key_path(record), (now, now))

    # ---- delete ---------------------------------------------------------
    def evict(self, revoked: frozenset[int], idle_s: float, now: float | None = None) -> list[tuple[KeyRecord, str]]:
        """Delete keys uploaded under a revoked certificate, and (``idle_s`` > 0) keys unused for ``idle_s``."""
        now = time.time() if now is None else now
        gone: list[tuple[KeyRecord, str]] = []
        with self._lock:
            records = list(self._records.values())
            used = dict(self._used)
        for record in records:
            gone_serial = next((s for s in record.serials if int(s, 16) in revoked), None)
            if gone_serial is not None:
                why = (f"the certificate that {'uploaded' if gone_serial == record.serial else 'attached'} them "
                       f"(serial {gone_serial}) is revoked")
            elif idle_s > 0 and now - used.get(record.key_id, record.created_at) > idle_s:
                why = f"unused for more than {idle_s:.0f} s"
            else:
                continue
            try:
                if self.registry is None:
                    self.delete(record.key_id, record.owner)
                else:  # idle: only this node's copy; revoked: everywhere
                    if gone_serial is not None:
                        self._remote(self.registry.delete, record.key_id)
                    with self._meta_lock:
                        self._delete(record.key_id, record.owner)
            except ServiceError as exc:  # its owner deleted it meanwhile, or the registry is away (next rescan)
                if exc.code == grpc.StatusCode.UNAVAILABLE:
                    log.error("evicting keys %s: %s", record.key_id, exc.message)
                continue
            gone.append((record, why))
        return gone

    def attach(self, key_id: str, owner: str, model_id: str, version: str, serial: str = "") -> KeyRecord:
        """Let the keys serve one more version of their model (the caller checked they fit its circuit)."""
        with self._meta_lock:
            record = self.get(key_id, owner)
            if model_id != record.model_id:
                raise invalid(f"evaluation keys {key_id} belong to model {record.model_id}, not {model_id}: keys are "
                              "shared between versions of one model only")
            if version in record.versions:
                return record
            if self.registry is not None:  # one UPDATE there: attaches through two nodes at once both count
                remote = self._remote(self.registry.attach, key_id, version, serial)
                if remote is None:
                    self._drop_local(key_id)
                    raise not_found(f"evaluation keys {key_id} were deleted; upload them again (UploadKeys)")
                updated = replace(record, served=remote.versions, attach_serials=remote.attach_serials)
                self._rewrite(updated)
                return updated
            serials = record.attach_serials + ((serial,) if serial and serial not in record.serials else ())
            updated = replace(record, served=(*record.versions, version), attach_serials=serials)
            self._rewrite(updated)
            return updated

    def detach(self, key_id: str, owner: str, model_id: str, version: str) -> tuple[KeyRecord, bool]:
        """Stop serving one version (nothing to do if they do not); the keys are deleted with the last.
        Returns (record, deleted)."""
        with self._meta_lock:
            if self.registry is not None:
                return self._detach_shared(key_id, owner, model_id, version)
            record = self.get(key_id, owner, usable=False)
            if not record.serves(model_id, version):  # detached already (say, from another of its hosts)
                return record, False
            left = tuple(v for v in record.versions if v != version)
            if not left:
                return self.delete(key_id, owner), True
            updated = replace(record, served=left)
            self._rewrite(updated)
            return updated, False

    def _rewrite(self, record: KeyRecord) -> None:
        """Replace a record's metadata on disk, then in memory (caller holds ``_meta_lock``)."""
        with _disk_space("updating evaluation key metadata"):
            write_atomic(self.root / f"{record.key_id}.json", record.to_json(), 0o600)
        with self._lock:
            self._records[record.key_id] = record

    def delete(self, key_id: str, owner: str) -> KeyRecord:
        with self._meta_lock:
            if self.registry is None:
                return self._delete(key_id, owner)
            remote = self._shared(key_id, owner)
            self._remote(self.registry.delete, key_id)
            self._drop_local(key_id)
            return remote

    # ---- the shared key registry ------------------------------------------
    def _remote(self, call: Callable[..., Any], *args: Any) -> Any:
        """A registry call; a registry that cannot answer is UNAVAILABLE, never a fallback to the local copy."""
        try:
            return call(*args)
        except RegistryError as exc:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later") from None

    def _shared(self, key_id: str, owner: str) -> KeyRecord:
        """The registry's record of ``key_id``, the caller's; a local copy of a key the registry lost goes."""
        check_key_id(key_id)
        remote = self._remote(self.registry.get, key_id)
        if remote is None:
            if self._drop_local(key_id) is not None:
                log.info("evaluation keys %s are no longer in the key registry: local copy deleted", key_id)
            raise not_found(f"no evaluation keys with id {key_id}; upload them again (UploadKeys)")
        if remote.owner != owner:
            raise denied(f"evaluation keys {key_id} belong to another owner")
        return remote

    def current(self, key_id: str, owner: str, load: Callable[[KeyRecord, Path, str], Any] | None = None,
                deadline: float | None = None) -> KeyRecord:
        """``get`` for Predict and AttachKeys; with a registry, its record first (one indexed SELECT per call).

        Keys the registry no longer has are refused (and their copy here deleted): a DeleteKeys through any
        node ends them on all. Keys it has and this node lacks are fetched to a temp file in keys_dir, checked
        like an upload (size and SHA-256, then ``load(record, path, key_id)``: the circuit check and Concrete's
        parse, in owners' turns at the key-check gate until ``deadline``), and installed as a local copy.
        Versions attached or detached through other nodes are taken over from the registry's record.
        """
        if self.registry is None:
            return self.get(key_id, owner)
        remote = self._shared(key_id, owner)
        with self._lock:
            local = self._records.get(key_id)
        if local is None:
            self.registry_event("miss")
            if load is None:
                raise not_found(f"no evaluation keys with id {key_id} on this node")
            with self._meta_lock:  # one load at a time: two calls for the same missing key fetch it once
                with self._lock:
                    local = self._records.get(key_id)
                if local is None:
                    self._load(remote, load, deadline)
                    self.registry_event("load")
        else:
            self.registry_event("hit")
            if local.versions != remote.versions or local.attach_serials != remote.attach_serials:
                with self._meta_lock:  # not for a copy deleted meanwhile: no metadata without its keys
                    with self._lock:
                        present = key_id in self._records
                    if present:
                        self._rewrite(replace(local, served=remote.versions, attach_serials=remote.attach_serials))
        return self.get(key_id, owner)

    def _load(self, record: KeyRecord, load: Callable[[KeyRecord, Path, str], Any], deadline: float | None) -> None:
        """Fetch ``record``'s bytes from the registry, check them as an upload is checked, install them here."""
        with self._lock:
            self._check_space(record.owner, record.size)
        started = time.perf_counter()
        with _disk_space("loading evaluation keys from the key registry"):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".part")
        path = Path(tmp)
        try:
            os.fchmod(fd, 0o600)
            with _disk_space("loading evaluation keys from the key registry"), os.fdopen(fd, "wb") as fh:
                whole = self._remote(self.registry.fetch, record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if not whole:
                raise ServiceError(grpc.StatusCode.DATA_LOSS,
                                   f"evaluation keys {record.key_id} in the key registry do not match their SHA-256 or "
                                   "size (deleted meanwhile, or damaged): delete them and upload new keys")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                with self.validation_gate.slot(record.owner, wait):
                    keys = load(record, path, record.key_id)
            except SlotTimeout:
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"the keys could not be checked within the call's deadline ({wait:.1f} s): other "
                                   "owners' keys are being checked; try again") from None
            self._install(record, path, keys)
        finally:
            path.unlink(missing_ok=True)
        log.info("owner=%s: loaded keys %s (%d bytes) from the key registry in %.3f s", record.owner, record.key_id,
                 record.size, time.perf_counter() - started)

    def _publish(self, record: KeyRecord) -> None:
        """After an upload was installed here: into the registry too, or not at all (the upload fails)."""
        if self.registry is None:
            return
        try:
            self._remote(self.registry.put, record, self.key_path(record))
        except BaseException:
            self._drop_local(record.key_id)
            raise

    def _detach_shared(self, key_id: str, owner: str, model_id: str, version: str) -> tuple[KeyRecord, bool]:
        remote = self._shared(key_id, owner)
        if not remote.serves(model_id, version):
            return remote, False
        after, deleted = self._remote(self.registry.detach, key_id, version)
        if after is None or deleted:
            self._drop_local(key_id)
            return remote, True
        with self._lock:
            local = self._records.get(key_id)
        if local is not None:
            self._rewrite(replace(local, served=after.versions, attach_serials=after.attach_serials))
        return after, False

    def _drop_local(self, key_id: str) -> KeyRecord | None:
        """Delete this node's copy of ``key_id`` whoever owns it (the registry decided); None if there was none."""
        with self._meta_lock, self._lock:
            record = self._records.get(key_id)
        if record is None:
            return None
        with self._meta_lock:
            return self._delete(key_id, record.owner)

    def _delete(self, key_id: str, owner: str) -> KeyRecord:
        record = self.get(key_id, owner, usable=False)
        with self._lock:
            self._used.pop(key_id, None)
            self._records.pop(key_id, None)
            self._quarantined.pop(key_id, None)
            entry = self._cache.pop(key_id, None)
            if entry:
                self._cached -= entry[0]
        (self.root / f"{key_id}.json").unlink(missing_ok=True)  # metadata first: a crash leaves an orphan, swept later
        (self.root / f"{key_id}.evk").unlink(missing_ok=True)
        (self.root / f"{key_id}.quarantine").unlink(missing_ok=True)
        return record

    # ---- deserialized keys ----------------------------------------------
    def _remember(self, record: KeyRecord, keys: Any) -> None:
        cost = int(record.size * MEMORY_PER_KEY_BYTE)
        if keys is None or cost > self.cache_bytes:  # None: the keys live in the sandboxed workers
            return  # loaded per request instead: memory stays bounded by the budget, not by owner count
        with self._lock:
            if record.key_id in self._cache or record.key_id not in self._records:
                return
            self._cache[record.key_id] = (cost, keys)
            self._cached += cost
            while self._cached > self.cache_bytes and self._cache:
                _, (size, _) = self._cache.popitem(last=False)
                self._cached -= size

    def evaluation_keys(self, record: KeyRecord) -> Any:
        """The deserialized keys (LRU-cached within ``cache_bytes``); read from disk otherwise."""
        with self._lock:
            entry = self._cache.get(record.key_id)
            if entry is not None:
                self._cache.move_to_end(record.key_id)
                return entry[1]
        with self._load_lock:
            with self._lock:
                entry = self._cache.get(record.key_id)
            if entry is not None:
                return entry[1]
            try:
                keys = _deserialize((self.root / f"{record.key_id}.evk").read_bytes())
            except FileNotFoundError:
                raise not_found(f"evaluation keys {record.key_id} were deleted") from None
            self._remember(record, keys)
            return keys
