"""Private keys encrypted at rest: the CA key and the release key under a passphrase.

A passphrase comes from a file (``--passphrase-file``, its first line), an interactive
prompt (``--prompt-passphrase``) or the environment (``FEDFHE_PKI_PASSPHRASE`` for
``fedfhe-pki``, ``FEDFHE_RELEASE_PASSPHRASE`` where the release key signs: compile, train).
Keys are written with ``BestAvailableEncryption``: PKCS#8 PBES2, AES-256-CBC under a key that
``cryptography`` 46 derives with PBKDF2-HMAC-SHA256 and only 2048 rounds, which slows a guesser
little: the passphrase must be long and random (a generated one in a file, not a word). An
unencrypted key keeps loading as before, with or without a passphrase.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from fedfhe_common.runtime.errors import PKIError

PKI_ENV = "FEDFHE_PKI_PASSPHRASE"
RELEASE_ENV = "FEDFHE_RELEASE_PASSPHRASE"
PKI_HINT = f"--passphrase-file or {PKI_ENV} (or --prompt-passphrase)"
RELEASE_HINT = f"{RELEASE_ENV} (fedfhe-pki: --passphrase-file or --prompt-passphrase)"
MIN_LENGTH = 8  # for a new key; a key made elsewhere is opened with whatever passphrase it has
_MAX_FILE_BYTES = 4096


class PassphraseNeeded(PKIError):
    """The key is encrypted and no passphrase was given."""


def from_env(*names: str) -> bytes | None:
    """The first of ``names`` set to a non-empty value, as bytes."""
    for name in names:
        value = os.environ.get(name, "")
        if value:
            return value.encode()
    return None


def read_file(path: Path) -> bytes:
    """A passphrase file's first line (its newline is not part of the passphrase)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PKIError(f"{path}: cannot read the passphrase file: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise PKIError(f"{path}: a passphrase file holds one line, this one is over {_MAX_FILE_BYTES} bytes")
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not line:
        raise PKIError(f"{path}: the passphrase file's first line is empty")
    return line


def prompt(what: str, confirm: bool) -> bytes:
    """Ask on the terminal (twice when ``confirm``: a typo would lock the new key away)."""
    try:
        first = getpass.getpass(f"{what} passphrase: ")
        if confirm and getpass.getpass(f"{what} passphrase (again): ") != first:
            raise PKIError(f"{what}: the two passphrases differ; nothing written")
    except EOFError:
        raise PKIError(f"{what}: no passphrase typed (no terminal?): use --passphrase-file or {PKI_ENV}") from None
    if not first:
        raise PKIError(f"{what}: empty passphrase")
    return first.encode()


def resolve(file: Path | None, ask: bool, env: tuple[str, ...], *, what: str, confirm: bool = False) -> bytes | None:
    """The passphrase from ``file``, else the prompt (``ask``), else the first of ``env`` that is set; or None."""
    if file is not None:
        return read_file(file)
    if ask:
        return prompt(what, confirm)
    return from_env(*env)


def encryption(passphrase: bytes | None, what: str) -> serialization.KeySerializationEncryption:
    """How a new key is written: under ``passphrase`` (at least MIN_LENGTH bytes), or in the clear."""
    if passphrase is None:
        return serialization.NoEncryption()
    if len(passphrase) < MIN_LENGTH:
        raise PKIError(f"{what}: a passphrase needs at least {MIN_LENGTH} characters; nothing written")
    return serialization.BestAvailableEncryption(passphrase)


def is_encrypted(pem: bytes) -> bool:
    """A PKCS#8 ``ENCRYPTED PRIVATE KEY`` or a traditional PEM with ``Proc-Type: 4,ENCRYPTED``."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


def load_private_key(path: Path, passphrase: bytes | None, hint: str) -> PrivateKeyTypes:
    """The key in PEM file ``path``; PassphraseNeeded naming ``hint`` when it is encrypted and
    ``passphrase`` is None, PKIError on a wrong passphrase. FileNotFoundError propagates."""
    data = Path(path).read_bytes()
    encrypted = is_encrypted(data)
    if encrypted and passphrase is None:
        raise PassphraseNeeded(f"{Path(path).name} is encrypted: give its passphrase with {hint}")
    try:
        return serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise PKIError(f"{path}: wrong passphrase (it does not decrypt the key)") from None
        raise PKIError(f"{path}: not a PEM private key: {str(exc)[:200]}") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{path}: not a usable PEM private key: {str(exc)[:200]}") from None
