"""An owner's keys reused across versions of a model whose circuits take the same key set.

Each version's signed manifest records ``key_params_sha256`` (``fedfhe_common.key_params``), checked
against its own client.zip when verified. A new version with the fingerprint of a version this owner
already holds keys for takes those keys (no key generation) and, where the node already has their
evaluation part, asks it to attach them to the new version (no upload: a tree's keys are 60-78 MB).
A manifest without the field, or another fingerprint, means new keys, as before.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedfhe_common import bundle, key_params
from fedfhe_common.errors import FedfheError
from fedfhe_common.manifest import MANIFEST

from .keys import ModelKeys

MAX_CANDIDATES = 8  # newest versions with keys looked at: each costs a signature and content check


def siblings(state_dir: Path, model_id: str, version: str, fingerprint: str | None,
             release_key: Ed25519PublicKey) -> list[ModelKeys]:
    """Other versions of ``model_id`` holding keys whose verified manifest records ``fingerprint``, newest first."""
    if not fingerprint:
        return []
    root = Path(state_dir) / "inference" / model_id
    try:
        names = [d.name for d in root.iterdir() if bundle.valid_name(d.name) and d.name != version
                 and (d / MANIFEST).is_file() and (d / "keyset.bin").is_file()]
    except OSError:
        return []
    found = []
    for name in sorted(names, key=bundle.version_key, reverse=True)[:MAX_CANDIDATES]:
        keys = ModelKeys(state_dir, model_id, name)
        try:
            meta = keys.verified_specs(release_key)  # the fingerprint is trusted only from a verified manifest
        except FedfheError:
            continue
        if key_params.recorded(meta) == fingerprint:
            found.append(keys)
    return found


def adopt_keyset(keys: ModelKeys, candidates: list[ModelKeys]) -> str | None:
    """Give ``keys`` the newest candidate's keyset unless it has one; returns that version (None: nothing reused)."""
    if keys.keyset_path.is_file() or not candidates:
        return None
    keys.link_keyset(candidates[0])
    return candidates[0].version


def shared_key_id(candidates: list[ModelKeys], address: str, evaluation_sha256: str) -> tuple[str, str] | None:
    """(key id, version) of these very evaluation keys already on the node at ``address``, under another version."""
    for keys in candidates:
        key_id = keys.key_id(address, evaluation_sha256)
        if key_id:
            return key_id, keys.version
    return None


def forget_everywhere(state_dir: Path, model_id: str, address: str, key_id: str) -> list[str]:
    """Forget ``key_id`` at ``address`` in every version of ``model_id`` (the node deleted the key set); the
    versions that had it."""
    root = Path(state_dir) / "inference" / model_id
    gone = []
    with contextlib.suppress(OSError):
        for d in sorted(root.iterdir()):
            if not bundle.valid_name(d.name):
                continue
            keys = ModelKeys(state_dir, model_id, d.name)
            if keys.recorded_key_id(address) == key_id:
                keys.forget_key_id(address)
                gone.append(d.name)
    return gone
