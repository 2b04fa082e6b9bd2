"""Published FHE bundles: the on-disk layout, publishing, and the verified in-memory registry.

Layout: ``bundles_dir/<model_id>/<version>/{client.zip, server.zip, manifest.json}``.
A version is immutable once published. Every bundle's manifest is verified
before anything in it is loaded; a bundle that fails is refused (logged),
the others keep being served.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedfhe_common.contracts import bundle as bundle_format
from fedfhe_common.contracts import key_params
from fedfhe_common.contracts.bundle import CLIENT_ZIP, SERVER_ZIP, SIGNATURE, valid_name, version_key
from fedfhe_common.contracts.manifest import MANIFEST, sha256_file
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.runtime.errors import FedfheError, IntegrityError
from fedfhe_common.runtime.fileio import fsync_dir

from .errors import invalid, not_found

log = logging.getLogger("fedfhe.inference.bundles")


def read_bundle_manifest(directory: Path, key: Ed25519PublicKey) -> dict[str, Any]:
    """Signature, file hashes, metadata, zip contents (``fedfhe_common.contracts.bundle.read``); IntegrityError."""
    return bundle_format.read(directory, key)


def publish_bundle(source: Path, bundles_dir: Path, key: Ed25519PublicKey) -> tuple[Path, bool]:
    """Verify ``source`` and install it as ``bundles_dir/<model_id>/<version>`` atomically.

    Returns (destination, installed); publishing the identical bundle again is a no-op,
    a different bundle under an existing version is refused (versions are immutable),
    and so is any bundle the release key did not sign or whose contents are not allowed.
    """
    source = Path(source)
    meta = read_bundle_manifest(source, key)
    model_id, version = meta["model_id"], meta["version"]
    dest = Path(bundles_dir) / model_id / version
    if dest.exists():
        if (dest / MANIFEST).is_file() and sha256_file(dest / MANIFEST) == sha256_file(source / MANIFEST):
            return dest, False
        raise FedfheError(
            f"{dest}: model {model_id} version {version} is already published with different content; "
            "versions are immutable, compile with a new --model-version"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{version}.publish."))
    try:
        bundle_format.copy(source, tmp)
        for member in bundle_format.MEMBERS:
            with open(tmp / member, "rb") as fh:
                os.fsync(fh.fileno())
        read_bundle_manifest(tmp, key)  # the copy, not only the source, must verify
        os.chmod(tmp, 0o755)
        tmp.rename(dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, True


@dataclass
class LoadedBundle:
    """One servable model version: verified metadata, public client specs in memory, the circuit."""

    model_id: str
    version: str
    directory: Path
    meta: dict[str, Any]
    schema: DatasetSchema
    bundle_sha256: str
    client_zip: bytes
    client_zip_sha256: str
    server: Any  # concrete.ml.deployment.FHEModelServer
    manifest: bytes = b""  # the signed manifest.json, served to owners with its signature
    signature: bytes = b""
    key_set: dict[str, Any] = field(default_factory=dict)  # client.specs.json's keyset: the keys the circuit takes
    # its fingerprint (fedfhe_common.contracts.key_params), also for bundles that do not sign it
    key_params_sha256: str = ""

    @property
    def family(self) -> str:
        return str(self.meta.get("family") or self.meta.get("model_class") or "")

    @property
    def n_bits(self) -> int:
        """The quantisation bits (the largest, for models that quantise inputs and leaves separately)."""
        n = self.meta.get("n_bits")
        if isinstance(n, dict):
            n = max((v for v in n.values() if isinstance(v, int)), default=0)
        return n if isinstance(n, int) else 0


def private_copy(verified_root: Path, model_id: str, version: str, data: dict[str, bytes]) -> Path:
    """The verified zips written to a directory of the node's own (0700, files 0400), outside bundles_dir.

    Concrete and the FHE workers load from here, never from bundles_dir: a server.zip swapped there
    after the check (bundles_dir is writable by whoever publishes) never reaches them.
    """
    target = Path(verified_root) / model_id / f"{version}-{hashlib.sha256(data[MANIFEST]).hexdigest()[:16]}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True, mode=0o700)
    for name in bundle_format.FILES:
        fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data[name])
    return target


def load_bundle(directory: Path, key: Ed25519PublicKey, verified_root: Path) -> LoadedBundle:
    """Verify (signature, hashes, contents) on bytes read once, copy those bytes privately, then load the copy."""
    from concrete.ml.deployment import FHEModelServer  # lazy: concrete-ml takes seconds to import

    meta, data = bundle_format.read_verified(directory, key)
    if (meta["model_id"], meta["version"]) != (directory.parent.name, directory.name):
        raise IntegrityError(
            f"{directory}: manifest names {meta['model_id']}/{meta['version']}, "
            "but the bundle sits elsewhere; publish it with 'fedfhe-inference publish'"
        )
    key_set = key_params.keyset_of_client_zip(data[CLIENT_ZIP])
    private = private_copy(verified_root, meta["model_id"], meta["version"], data)
    try:
        server = FHEModelServer(str(private))
    except Exception as exc:  # noqa: BLE001 - any load failure (versions, corrupt circuit) refuses this bundle only
        raise IntegrityError(f"{directory}: Concrete ML cannot load {SERVER_ZIP}: {exc}") from None
    return LoadedBundle(
        model_id=meta["model_id"], version=meta["version"], directory=private, meta=meta,
        schema=DatasetSchema.from_mapping(meta["schema"]), bundle_sha256=hashlib.sha256(data[MANIFEST]).hexdigest(),
        client_zip=data[CLIENT_ZIP], client_zip_sha256=hashlib.sha256(data[CLIENT_ZIP]).hexdigest(),
        server=server, manifest=data[MANIFEST], signature=data[SIGNATURE],
        key_set=key_set, key_params_sha256=key_params.fingerprint({"keyset": key_set}),
    )


@dataclass(frozen=True)
class ScanReport:
    loaded: list[str]
    refused: list[tuple[str, str]]
    removed: list[str]


class BundleRegistry:
    """The bundles being served; ``rescan`` picks up newly published versions without a restart."""

    def __init__(self, root: Path, key: Ed25519PublicKey, verified_root: Path | None = None) -> None:
        self.root = Path(root)
        self.key = key
        # Private verified copies (load_bundle): a fresh 0700 directory of this process unless given.
        if verified_root is None:
            verified_root = Path(tempfile.mkdtemp(prefix="fedfhe-inference-verified-"))
            atexit.register(shutil.rmtree, verified_root, True)
        self.verified_root = Path(verified_root)
        self._bundles: dict[tuple[str, str], LoadedBundle] = {}
        self._refused: dict[Path, tuple[int, str]] = {}  # dir -> (manifest mtime, reason): not retried until it changes
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()

    def _candidates(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        out = []
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            out += [d for d in sorted(model_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        return out

    def rescan(self) -> ScanReport:
        with self._scan_lock:
            loaded, refused = [], []
            present = set()
            candidates = self._candidates()
            for gone in set(self._refused) - set(candidates):  # a refused version removed: no longer refused
                self._refused.pop(gone)
            for directory in candidates:
                key = (directory.parent.name, directory.name)
                present.add(key)
                if key in self._bundles:
                    continue
                try:
                    mtime = (directory / MANIFEST).stat().st_mtime_ns
                except OSError:
                    mtime = -1
                if self._refused.get(directory, (None,))[0] == mtime:
                    continue
                try:
                    bundle = load_bundle(directory, self.key, self.verified_root)
                except (FedfheError, OSError) as exc:
                    self._refused[directory] = (mtime, str(exc))
                    refused.append((str(directory), str(exc)))
                    log.error("refused bundle %s: %s", directory, exc)
                    continue
                self._refused.pop(directory, None)
                with self._lock:
                    self._bundles[key] = bundle
                loaded.append(f"{bundle.model_id}/{bundle.version}")
                log.info("serving %s/%s (bundle sha256 %s)", bundle.model_id, bundle.version, bundle.bundle_sha256)
            with self._lock:
                removed = [f"{m}/{v}" for (m, v) in self._bundles if (m, v) not in present]
                for name in removed:
                    gone = self._bundles.pop(tuple(name.split("/", 1)), None)  # type: ignore[arg-type]
                    if gone is not None and self.verified_root in gone.directory.parents:
                        shutil.rmtree(gone.directory, ignore_errors=True)  # its private verified copy
            for name in removed:
                log.info("no longer serving %s (its directory is gone)", name)
            return ScanReport(loaded, refused, removed)

    def counts(self) -> tuple[int, int]:
        """(versions served, versions refused), for the metrics."""
        with self._lock:
            return len(self._bundles), len(self._refused)

    def versions(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(model id, version) of every version served and refused: `publish --reload` waits on them."""
        with self._lock:
            served = sorted(self._bundles)
        refused = sorted((d.parent.name, d.name) for d in list(self._refused))
        return served, refused

    def latest_version(self, model_id: str) -> str | None:
        with self._lock:
            versions = [v for (m, v) in self._bundles if m == model_id]
        return max(versions, key=version_key) if versions else None

    def get(self, model_id: str, version: str = "") -> LoadedBundle:
        if not valid_name(model_id):
            raise invalid(f"model id {model_id!r} is not a valid name")
        if version and not valid_name(version):
            raise invalid(f"model version {version!r} is not a valid name")
        chosen = version or self.latest_version(model_id)
        with self._lock:
            bundle = self._bundles.get((model_id, chosen or ""))
            known = sorted({m for (m, _) in self._bundles})
        if bundle is None:
            if model_id not in known:
                raise not_found(f"no model {model_id!r} is published here (known: {', '.join(known) or 'none'})")
            raise not_found(f"model {model_id!r} has no version {chosen!r} (latest: {self.latest_version(model_id)})")
        return bundle

    def all(self, model_id: str = "") -> list[tuple[LoadedBundle, bool]]:
        """(bundle, is_latest) for every served version, optionally of one model."""
        with self._lock:
            bundles = [b for b in self._bundles.values() if not model_id or b.model_id == model_id]
        latest = {m: self.latest_version(m) for m in {b.model_id for b in bundles}}
        bundles.sort(key=lambda b: (b.model_id, version_key(b.version)))
        return [(b, latest[b.model_id] == b.version) for b in bundles]
