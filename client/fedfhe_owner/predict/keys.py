"""The owner's FHE keys for one model version: generated here, kept here (0600), never sent.

Layout under ``<state_dir>/inference/<model_id>/<version>/``::

    client.zip      public client specs from the inference node (signature-, hash- and content-checked)
    manifest.json   the bundle manifest the release key signed, pinned for this version
    manifest.sig    its release signature
    keyset.bin      private + evaluation keys (0600, atomic); only the evaluation part is uploaded; a hard
                    link to another version's keyset.bin when both circuits take the same key set (key_reuse.py)
    key_ids.json    key id the node gave for our evaluation keys, per node address (and the version they
                    were attached from, when the node reuses another version's upload)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedfhe_common.contracts import bundle, bundle_content, key_params
from fedfhe_common.contracts.manifest import MANIFEST
from fedfhe_common.pki import release
from fedfhe_common.runtime.errors import FedfheError, IntegrityError
from fedfhe_common.runtime.fileio import write_atomic

MAX_CLIENT_ZIP_BYTES = 64 << 20


def verify_client_specs(client_zip: bytes, manifest: bytes, signature: bytes, key: Ed25519PublicKey,
                        model_id: str, version: str, where: str) -> dict[str, Any]:
    """Everything an owner checks before Concrete ML parses a byte of client specs; returns the manifest.

    The release signature over the manifest, the model version it names, client.zip
    against the signed SHA-256, then its members, jsonpickle/skops entries and crypto
    parameters (Concrete's 128-bit curve): the inference node chooses none of them.
    """
    if len(client_zip) > MAX_CLIENT_ZIP_BYTES:
        raise IntegrityError(f"{where}: client specs of {len(client_zip)} bytes are larger than expected")
    meta = bundle.verify_signed_manifest(manifest, signature, key, where)
    if (meta["model_id"], meta["version"]) != (model_id, version):
        raise IntegrityError(f"{where}: the signed manifest is for {meta['model_id']} {meta['version']}, "
                             f"not {model_id} {version}")
    if hashlib.sha256(client_zip).hexdigest() != meta["files"][bundle.CLIENT_ZIP]:
        raise IntegrityError(f"{where}: {bundle.CLIENT_ZIP} does not match the SHA-256 in the signed manifest")
    specs = bundle_content.check_client_zip(client_zip, f"{where}: {bundle.CLIENT_ZIP}")
    key_params.check_recorded(meta, specs, where)  # the key-reuse fingerprint is that of these very specs
    return meta


def newest_seen_version(state_dir: Path, model_id: str) -> str | None:
    """The newest version of ``model_id`` this owner has verified and pinned (None: none yet)."""
    root = Path(state_dir) / "inference" / model_id
    try:
        seen = [d.name for d in root.iterdir() if bundle.valid_name(d.name) and (d / MANIFEST).is_file()]
    except OSError:
        return None
    return max(seen, key=bundle.version_key) if seen else None


class ModelKeys:
    """Client specs, keyset and uploaded-key ids of one model version, under the owner's state dir."""

    def __init__(self, state_dir: Path, model_id: str, version: str) -> None:
        for value in (model_id, version):
            if not bundle.valid_name(value):
                raise FedfheError(f"the inference node named a model {value[:80]!r} that is not a plain name")
        self.dir = Path(state_dir) / "inference" / model_id / version
        self.model_id, self.version = model_id, version
        self._fhe: Any = None

    @property
    def client_zip(self) -> Path:
        return self.dir / bundle.CLIENT_ZIP

    @property
    def keyset_path(self) -> Path:
        return self.dir / "keyset.bin"

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for d in (self.dir.parents[1], self.dir.parent, self.dir):  # inference/, <model_id>/, <version>/
            os.chmod(d, 0o700)

    def pinned_manifest_sha256(self) -> str | None:
        """SHA-256 of the manifest first accepted for this version (what the node must keep serving)."""
        try:
            return hashlib.sha256((self.dir / MANIFEST).read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def verified_specs(self, key: Ed25519PublicKey) -> dict[str, Any]:
        """Re-check the stored specs (signature, hash, contents) before Concrete ML loads them."""
        try:
            client_zip = self.client_zip.read_bytes()
            manifest = (self.dir / MANIFEST).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{self.dir}: stored client specs unreadable: {exc.strerror or exc}") from None
        return verify_client_specs(client_zip, manifest, release.read_signature(self.dir), key,
                                   self.model_id, self.version, f"stored client specs {self.dir}")

    def install_client_specs(self, client_zip: bytes, manifest: bytes, signature: bytes, key: Ed25519PublicKey,
                             where: str) -> dict[str, Any]:
        """Verify what a node sent, refuse other bytes for an already pinned version, then store it."""
        meta = verify_client_specs(client_zip, manifest, signature, key, self.model_id, self.version, where)
        pinned = self.pinned_manifest_sha256()
        if pinned is not None and pinned != hashlib.sha256(manifest).hexdigest():
            raise IntegrityError(
                f"{where}: model {self.model_id} version {self.version} was first served with manifest "
                f"sha256 {pinned[:16]}..., now with other bytes; refusing them (a version never changes)")
        self._ensure_dir()
        write_atomic(self.client_zip, client_zip, 0o644)
        write_atomic(self.dir / release.SIGNATURE, signature, 0o644)
        write_atomic(self.dir / MANIFEST, manifest, 0o644)  # last: its presence marks a complete install
        return meta

    def fhe_client(self) -> tuple[Any, float]:
        """FHEModelClient with this version's keyset, generated on first use; returns (client, keygen seconds)."""
        if self._fhe is not None:
            return self._fhe, 0.0
        from concrete import fhe  # lazy: concrete-ml takes seconds to import
        from concrete.ml.deployment import FHEModelClient  # lazy: concrete-ml takes seconds to import

        client = FHEModelClient(str(self.dir))  # no key_dir: Concrete's cache would write keys 0644
        started = time.perf_counter()
        if self.keyset_path.is_file():
            os.chmod(self.keyset_path, 0o600)
            client.client.keys = fhe.Keys.deserialize(self.keyset_path)
            seconds = 0.0
        else:
            client.generate_private_and_evaluation_keys()
            self._ensure_dir()
            write_atomic(self.keyset_path, client.client.keys.serialize(), 0o600)
            seconds = time.perf_counter() - started
        self._fhe = client
        return client, seconds

    def link_keyset(self, source: ModelKeys) -> None:
        """Use ``source``'s keyset (same key parameters): a hard link, so deleting either version's directory
        leaves the other's keys whole; a copy where the file system has no hard links."""
        self._ensure_dir()
        try:
            os.link(source.keyset_path, self.keyset_path)
        except FileExistsError:
            raise FedfheError(f"{self.keyset_path}: already holds keys; not replacing them") from None
        except OSError:
            write_atomic(self.keyset_path, source.keyset_path.read_bytes(), 0o600)
        os.chmod(self.keyset_path, 0o600)
        self._fhe = None

    # ---- key ids the node handed out --------------------------------------
    def _ids(self) -> dict[str, Any]:
        try:
            data = json.loads((self.dir / "key_ids.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def key_id(self, address: str, evaluation_sha256: str) -> str | None:
        entry = self._ids().get(address)
        if isinstance(entry, dict) and entry.get("evaluation_keys_sha256") == evaluation_sha256:
            return str(entry.get("key_id") or "") or None
        return None

    def recorded_key_id(self, address: str) -> str | None:
        """The key id recorded for ``address``, whatever keys it was for."""
        entry = self._ids().get(address)
        return str(entry.get("key_id") or "") or None if isinstance(entry, dict) else None

    def remember_key_id(self, address: str, key_id: str, evaluation_sha256: str, attached_from: str = "") -> None:
        ids = self._ids()
        ids[address] = {"key_id": key_id, "evaluation_keys_sha256": evaluation_sha256, "uploaded_at": time.time()}
        if attached_from:
            ids[address]["attached_from"] = attached_from
        self._ensure_dir()
        write_atomic(self.dir / "key_ids.json", (json.dumps(ids, indent=2) + "\n").encode(), 0o600)

    def forget_key_id(self, address: str) -> str | None:
        ids = self._ids()
        entry = ids.pop(address, None)
        if entry is not None:
            write_atomic(self.dir / "key_ids.json", (json.dumps(ids, indent=2) + "\n").encode(), 0o600)
        return entry.get("key_id") if isinstance(entry, dict) else None
