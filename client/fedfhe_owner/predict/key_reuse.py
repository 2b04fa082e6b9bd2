"""An owner's keys reused across versions of a model whose circuits take the same key set.

Each version's signed manifest records ``key_params_sha256`` (``fedfhe_common.contracts.key_params``), checked
against its own client.zip when verified. A new version with the fingerprint of a version this owner
already holds keys for takes those keys (no key generation) and, where the node already has their
evaluation part, asks it to attach them to the new version (no upload: a tree's keys are 60-78 MB).
A manifest without the field, or another fingerprint, means new keys, as before.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedfhe_common.contracts import bundle, key_params
from fedfhe_common.contracts.manifest import MANIFEST
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_owner.predict.keys import ModelKeys

MAX_CANDIDATES = 8  # newest versions with keys looked at: each costs a signature and content check


class Siblings:
    """Other versions of a model holding keys whose verified manifest records the same fingerprint, newest first.

    Looked up only when needed (a version without keys yet, or keys without a key id at a node): each
    candidate costs a signature and content check of its stored specs.
    """

    def __init__(self, state_dir: Path, model_id: str, version: str, fingerprint: str | None,
                 release_key: Ed25519PublicKey) -> None:
        self.state_dir, self.model_id, self.version = Path(state_dir), model_id, version
        self.fingerprint, self.release_key = fingerprint, release_key

    @functools.cached_property
    def keys(self) -> list[ModelKeys]:
        if not self.fingerprint:
            return []
        root = self.state_dir / "inference" / self.model_id
        try:
            names = [d.name for d in root.iterdir() if bundle.valid_name(d.name) and d.name != self.version
                     and (d / MANIFEST).is_file() and (d / "keyset.bin").is_file()]
        except OSError:
            return []
        found = []
        for name in sorted(names, key=bundle.version_key, reverse=True)[:MAX_CANDIDATES]:
            keys = ModelKeys(self.state_dir, self.model_id, name)
            try:
                meta = keys.verified_specs(self.release_key)  # the fingerprint is trusted from a verified manifest
            except FedfheError:
                continue
            if key_params.recorded(meta) == self.fingerprint:
                found.append(keys)
        return found


def adopt_keyset(keys: ModelKeys, siblings: Siblings) -> str | None:
    """Give ``keys`` the newest sibling's keyset unless it has one; returns that version (None: nothing reused)."""
    if keys.keyset_path.is_file() or not siblings.keys:
        return None
    keys.link_keyset(siblings.keys[0])
    return siblings.keys[0].version


def shared_key_id(siblings: Siblings, address: str, evaluation_sha256: str) -> tuple[str, str] | None:
    """(key id, version) of these very evaluation keys already on the node at ``address``, under another version."""
    for keys in siblings.keys:
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
