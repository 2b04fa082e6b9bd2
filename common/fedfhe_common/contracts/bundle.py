"""The FHE deployment bundle: its members, and how it is written, signed, read and verified.

A bundle directory holds Concrete ML's ``client.zip`` (public client specs) and
``server.zip`` (the circuit), a SHA-256 ``manifest.json`` of kind
``fedfhe-fhe-bundle`` (model id, version, schema, accuracies measured at compile
time) and ``manifest.sig``, the release key's signature over the manifest's exact
bytes. The coordinator writes bundles; the inference node and the owners read
them, and accept one only when the signature verifies and the zips hold nothing
but what ``FHEModelDev`` writes (``bundle_content``), before Concrete parses a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedfhe_common.contracts import bundle_content, key_params
from fedfhe_common.contracts.manifest import MANIFEST, canonical_body, verify_manifest, write_manifest
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.pki import release
from fedfhe_common.runtime.errors import ConfigError, FedfheError, IntegrityError
from fedfhe_common.runtime.fileio import write_dir_atomic

KIND = "fedfhe-fhe-bundle"
# The bundle's member names: every other module takes them from here (issue 28). The signature's
# name is release.SIGNATURE, shared with signed training artifacts.
CLIENT_ZIP = "client.zip"  # Concrete ML's FHEModelDev names its two zips so; FHEModelClient/Server read them so
SERVER_ZIP = "server.zip"
SIGNATURE = release.SIGNATURE
FILES = (CLIENT_ZIP, SERVER_ZIP)
MEMBERS = (*FILES, MANIFEST, SIGNATURE)
MAX_MANIFEST_BYTES = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def version_key(version: str) -> tuple:
    """Natural order of versions: "10" after "9", "20250102" after "20250101"; the largest is the latest."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p)


def valid_name(value: str) -> bool:
    """Model ids and versions become directory names on the inference node and the owners' hosts."""
    return isinstance(value, str) and bool(_NAME.fullmatch(value))


def check_name(value: str, what: str) -> str:
    if not valid_name(value):
        raise ConfigError(
            f"{what} {str(value)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def read_members(directory: Path) -> dict[str, bytes]:
    """The two zips of a bundle directory, by member name."""
    return {name: (Path(directory) / name).read_bytes() for name in FILES}


def check_zips(data: dict[str, bytes], where: str) -> Any:
    """Both zips hold nothing but what ``FHEModelDev`` writes (``bundle_content``); IntegrityError naming the zip.
    Returns the client specs ``check_client_zip`` read (their key parameters are fingerprinted: key_params)."""
    specs = bundle_content.check_client_zip(data[CLIENT_ZIP], f"{where}/{CLIENT_ZIP}")
    bundle_content.check_server_zip(data[SERVER_ZIP], f"{where}/{SERVER_ZIP}")
    return specs


def check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The metadata every reader relies on: plain model id and version, a valid schema."""
    for key in ("model_id", "version"):
        if not valid_name(meta.get(key)):  # type: ignore[arg-type]
            raise IntegrityError(f"{where}: missing or invalid {key} {str(meta.get(key))[:80]!r}")
    if sorted(meta.get("files", {})) != sorted(FILES):
        raise IntegrityError(f"{where}: must list exactly {', '.join(FILES)}")
    try:
        schema = DatasetSchema.from_mapping(meta.get("schema"), "manifest: schema")
        # A typed schema's rows are transformed before encryption: exactly this, which must fit the schema.
        Preprocessing.from_dict(schema, meta.get("preprocessing"), "manifest: preprocessing")
    except FedfheError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    return meta


def preprocessing_of(meta: dict[str, Any]) -> Preprocessing:
    """The transform a verified manifest says the model was trained with (the identity for legacy schemas)."""
    schema = DatasetSchema.from_mapping(meta.get("schema"), "manifest: schema")
    return Preprocessing.from_dict(schema, meta.get("preprocessing"), "manifest: preprocessing")


def write(
    out_dir: Path,
    produce: Callable[[Path], None],
    meta: dict[str, Any],
    signing_key: Ed25519PrivateKey,
    force: bool = False,
) -> Path:
    """``produce(tmp)`` writes client.zip and server.zip; check, manifest, sign, then one rename.

    A bundle that fails the content checks is never signed: compile stops here
    instead of handing the node something it would refuse. The manifest records the
    fingerprint of the key set the circuit needs (``key_params``): owners reuse keys on it.
    """
    check_name(meta.get("model_id", ""), "model id")
    check_name(meta.get("version", ""), "version")
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise FedfheError(f"{out_dir}: already exists; choose another --out or pass --force")

    def build(tmp: Path) -> None:
        produce(tmp)
        specs = check_zips(read_members(tmp), str(out_dir))
        write_manifest(tmp, KIND, list(FILES), {**meta, key_params.FIELD: key_params.fingerprint(specs)})
        release.sign_manifest(tmp, signing_key)

    write_dir_atomic(out_dir, build, mode=0o755)
    return out_dir


def verify_signed_manifest(raw: bytes, signature: bytes, key: Ed25519PublicKey, where: str) -> dict[str, Any]:
    """Signature first, then the manifest's form and metadata; nothing of it is trusted before."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"{where}: manifest of {len(raw)} bytes is too large")
    release.verify(key, raw, signature, where)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{where}: unreadable manifest: {str(exc)[:200]}") from None
    if not isinstance(body, dict) or body.get("kind") != KIND or not isinstance(body.get("files"), dict):
        raise IntegrityError(f"{where}: not a {KIND} manifest")
    if canonical_body(body) != raw:
        raise IntegrityError(f"{where}: manifest is not in the form fedfhe writes")
    return check_meta(body, where)


def read(directory: Path, key: Ed25519PublicKey) -> dict[str, Any]:
    """Verify a bundle directory: signature, every file's hash, metadata, zip contents; returns the manifest.

    Extra files are refused too: a bundle holds exactly ``MEMBERS``.
    """
    directory = Path(directory)
    where = str(directory)
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError as exc:
        raise IntegrityError(f"{where}: cannot list the bundle: {exc.strerror or exc}") from None
    extra = sorted(set(names) - set(MEMBERS))
    if extra:
        raise IntegrityError(f"{where}: unexpected files {extra[:5]} (a bundle holds {', '.join(MEMBERS)})")
    try:
        with open(directory / MANIFEST, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise IntegrityError(f"{where}: missing {MANIFEST}") from None
    except OSError as exc:
        raise IntegrityError(f"{where}: cannot read {MANIFEST}: {exc.strerror or exc}") from None
    meta = verify_signed_manifest(raw, release.read_signature(directory), key, where)
    verify_manifest(directory, KIND, raw)  # every member's hash, no links
    key_params.check_recorded(meta, check_zips(read_members(directory), where), where)
    return meta


MAX_ZIP_FILE_BYTES = 256 << 20


def read_verified(directory: Path, key: Ed25519PublicKey) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the bytes of a bundle, every check made on those very bytes (not on the path again).

    What a reader then hands to Concrete must be these bytes: a file swapped in the directory after
    this check never reaches it (``fedfhe_inference.bundles.load_bundle`` writes them to a private copy).
    Returns (manifest, {member: bytes}) for client.zip, server.zip, manifest.json and manifest.sig.
    """
    directory = Path(directory)
    where = str(directory)
    try:
        extra = sorted({p.name for p in directory.iterdir()} - set(MEMBERS))
    except OSError as exc:
        raise IntegrityError(f"{where}: cannot list the bundle: {exc.strerror or exc}") from None
    if extra:
        raise IntegrityError(f"{where}: unexpected files {extra[:5]} (a bundle holds {', '.join(MEMBERS)})")
    data: dict[str, bytes] = {}
    for name in MEMBERS:
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if name == SIGNATURE:  # verify_signed_manifest says "not signed"
                data[name] = b""
                continue
            raise IntegrityError(f"{where}: missing {name}") from None
        except OSError as exc:
            raise IntegrityError(f"{where}: cannot read {name}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise IntegrityError(f"{where}: {name} is not a plain file")
            data[name] = fh.read(MAX_ZIP_FILE_BYTES + 1)
        if len(data[name]) > MAX_ZIP_FILE_BYTES:
            raise IntegrityError(f"{where}: {name} is larger than {MAX_ZIP_FILE_BYTES} bytes")
    meta = verify_signed_manifest(data[MANIFEST], data[SIGNATURE], key, where)
    for name in FILES:
        if hashlib.sha256(data[name]).hexdigest() != meta["files"][name]:
            raise IntegrityError(f"{where}/{name}: SHA-256 does not match the signed manifest (tampered or corrupt)")
    key_params.check_recorded(meta, check_zips(data, where), where)
    return meta, data


def copy(source: Path, dest_tmp: Path) -> None:
    """Copy a bundle's members (and only those) into an empty directory."""
    for name in MEMBERS:
        shutil.copyfile(Path(source) / name, Path(dest_tmp) / name)
