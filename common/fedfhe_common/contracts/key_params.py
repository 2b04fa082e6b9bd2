"""The fingerprint of the FHE key set a circuit needs: equal fingerprints, interchangeable keys.

A circuit's ``client.specs.json`` (in the bundle's client.zip) lists under ``keyset`` every key
its evaluation takes: the secret keys (id, LWE dimension, precision, key type) and the
bootstrap, keyswitch and packing-keyswitch keys with their parameters and compression. An
owner's keys (secret and evaluation) are generated from exactly that, so two circuits with the
same ``keyset`` take the same keys. Measured with Concrete ML 1.9.0: a decision tree retrained
on other rows with the same hyper-parameters gets the same keyset; other n_bits or depth give
another one; a linear model's secret-key dimension follows its weights, so retrained linear
models rarely share keys (their evaluation keys are empty anyway: 64 bytes).

The fingerprint is the SHA-256 of the keyset in canonical JSON (sorted keys, no spaces, floats
as Python writes them): the same parsed values always give the same bytes. The coordinator
records it in the signed bundle manifest (``key_params_sha256``); every reader recomputes it
from the verified client.zip and refuses a manifest that records another value.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from typing import Any

from fedfhe_common.runtime.errors import IntegrityError

FIELD = "key_params_sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")
KEY_KINDS = ("lweSecretKeys", "lweBootstrapKeys", "lweKeyswitchKeys", "packingKeyswitchKeys")


def keyset(specs: dict[str, Any]) -> dict[str, Any]:
    """The ``keyset`` of parsed client specs (IntegrityError when there is none)."""
    value = specs.get("keyset") if isinstance(specs, dict) else None
    if not isinstance(value, dict):
        raise IntegrityError("client.specs.json: no keyset")
    return value


def keyset_of_client_zip(client_zip: bytes) -> dict[str, Any]:
    """The keyset of a client.zip that already passed ``bundle_content.check_client_zip``."""
    try:
        with zipfile.ZipFile(io.BytesIO(client_zip)) as zf:
            return keyset(json.loads(zf.read("client.specs.json")))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise IntegrityError(f"client.zip: no readable client.specs.json ({str(exc)[:200]})") from None


def fingerprint(specs: dict[str, Any]) -> str:
    """SHA-256 hex of the circuit's keyset in canonical JSON."""
    try:
        canonical = json.dumps(keyset(specs), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"client.specs.json: keyset is not plain JSON ({exc})") from None
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded(meta: dict[str, Any]) -> str | None:
    """The fingerprint a (verified) manifest records; None for manifests written before it existed."""
    value = meta.get(FIELD)
    return value if isinstance(value, str) and _SHA256.fullmatch(value) else None


def check_recorded(meta: dict[str, Any], specs: dict[str, Any], where: str) -> None:
    """A manifest that records a fingerprint must record the one of its own client.zip; none is fine (older)."""
    if FIELD not in meta:
        return
    if recorded(meta) is None:
        raise IntegrityError(f"{where}: {FIELD} {str(meta.get(FIELD))[:80]!r} is not a SHA-256 hex digest")
    actual = fingerprint(specs)
    if meta[FIELD] != actual:
        raise IntegrityError(f"{where}: the manifest records key parameters {meta[FIELD][:16]}..., but its "
                             f"client.zip needs {actual[:16]}... (tampered or corrupt)")


def _walk(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _walk(old.get(k), new.get(k), f"{path}.{k}" if path else str(k), out)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{path}: {len(old)} keys, now {len(new)}")
            return
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _walk(a, b, f"{path}[{i}]", out)
    elif old != new:
        out.append(f"{path}: {json.dumps(old)} -> {json.dumps(new)}")


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """Where two keysets differ, first few paths with both values (e.g. ``lweSecretKeys[0].params.lweDimension:
    1352 -> 1356``); empty when they are equal."""
    out: list[str] = []
    _walk(old, new, "", out)
    shown = "; ".join(out[:limit])
    return shown + (f"; and {len(out) - limit} more" if len(out) > limit else "")
