"""Release signing: who vouches for a bundle, a training artifact or a Flower App.

A manifest's SHA-256 list proves that files are intact, not who made them. The
release key (Ed25519) signs the exact manifest bytes; every host that receives a
release holds the public half (``release.pub``, distributed with the CA) and
refuses what it does not verify. The private half (``release.key``, 0600) lives
where models are compiled: the coordinator. It may be encrypted at rest: ``fedfhe-pki
release-key`` with a passphrase; compile and train then read it from
``FEDFHE_RELEASE_PASSPHRASE`` (``pki_passphrase``).

Layout next to a manifest: ``manifest.json`` and its detached signature
``manifest.sig`` (the 64 raw Ed25519 signature bytes, base64, one line).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedfhe_common.pki.pki_passphrase import (
    RELEASE_ENV,
    RELEASE_HINT,
    PassphraseNeeded,
    encryption,
    from_env,
    load_private_key,
)
from fedfhe_common.runtime.errors import IntegrityError, PKIError
from fedfhe_common.runtime.fileio import write_atomic

KEY_FILE = "release.key"
PUB_FILE = "release.pub"
SIGNATURE = "manifest.sig"
_MAX_SIG_BYTES = 256


def make_release_key(
    directory: Path, force: bool = False, passphrase: bytes | None = None, hint: str = RELEASE_HINT
) -> tuple[Path, Path]:
    """``release.key`` (PKCS#8 PEM, 0600, encrypted under ``passphrase`` when given) and ``release.pub``
    (SubjectPublicKeyInfo PEM); kept unless ``force`` (an encrypted one is checked only with its passphrase)."""
    key_path, pub_path = Path(directory) / KEY_FILE, Path(directory) / PUB_FILE
    if key_path.exists() and pub_path.exists() and not force:
        try:
            load_signing_key(key_path, passphrase, hint)
        except PassphraseNeeded:
            load_verify_key(pub_path)
        return key_path, pub_path
    how = encryption(passphrase, KEY_FILE)
    key = Ed25519PrivateKey.generate()
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, how),
                 0o600)
    write_atomic(pub_path, public_pem(key.public_key()))
    return key_path, pub_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_signing_key(path: Path, passphrase: bytes | None = None, hint: str = RELEASE_HINT) -> Ed25519PrivateKey:
    """The release key; an encrypted one opens with ``passphrase``, else ``$FEDFHE_RELEASE_PASSPHRASE``."""
    try:
        key = load_private_key(Path(path), passphrase or from_env(RELEASE_ENV), hint)
    except FileNotFoundError:
        raise PKIError(f"{path}: release key missing; create it with 'fedfhe-pki --dir DIR release-key'") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PKIError(f"{path}: not a PEM private key: {str(exc)[:200]}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PKIError(f"{path}: the release key must be Ed25519, got {type(key).__name__}")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise PKIError(f"{path}: release public key missing (release.pub, distributed with the CA)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PKIError(f"{path}: not a PEM public key: {str(exc)[:200]}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PKIError(f"{path}: the release public key must be Ed25519, got {type(key).__name__}")
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """Short, printable id of a release key (first 16 hex of the raw key's SHA-256)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The detached signature file's content for ``data``."""
    return base64.b64encode(key.sign(data)) + b"\n"


def verify(key: Ed25519PublicKey, data: bytes, signature: bytes, what: str) -> None:
    """IntegrityError naming ``what`` unless ``signature`` (file content) signs exactly ``data``."""
    if not signature:
        raise IntegrityError(f"{what}: not signed (no {SIGNATURE}); only signed releases are accepted")
    if len(signature) > _MAX_SIG_BYTES:
        raise IntegrityError(f"{what}: signature of {len(signature)} bytes is not an Ed25519 signature")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what}: signature is not base64") from None
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise IntegrityError(
            f"{what}: signature does not verify with release key {key_fingerprint(key)} "
            "(signed by another key, or over other bytes)"
        ) from None


def sign_manifest(directory: Path, key: Ed25519PrivateKey, manifest: str = "manifest.json") -> Path:
    """Write ``manifest.sig`` over the exact bytes of ``directory/manifest``."""
    path = Path(directory) / SIGNATURE
    write_atomic(path, sign(key, (Path(directory) / manifest).read_bytes()))
    return path


def read_signature(directory: Path) -> bytes:
    """The detached signature beside a manifest (b"" when absent)."""
    path = Path(directory) / SIGNATURE
    try:
        if path.is_symlink():
            raise IntegrityError(f"{path}: is a symbolic link, refused")
        with open(path, "rb") as fh:
            return fh.read(_MAX_SIG_BYTES + 1)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read: {exc.strerror or exc}") from None
