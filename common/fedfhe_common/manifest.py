"""SHA-256 manifests: how a training artifact or FHE bundle proves it is intact.

Used for everything that crosses a host boundary instead of pickle: the
receiver verifies every listed file before it reads any of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .pki import write_atomic

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_member(name: str) -> str:
    """A file name inside a manifest: one plain path component, nothing else."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
        raise IntegrityError(f"manifest names an unsafe file {name!r}")
    return name


def write_manifest(directory: Path, kind: str, files: list[str], meta: dict[str, Any]) -> Path:
    entries = {safe_member(f): sha256_file(directory / f) for f in files}
    body = {"kind": kind, "format_version": 1, "files": entries, **meta}
    path = directory / MANIFEST
    write_atomic(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return path


def verify_manifest(directory: Path, kind: str) -> dict[str, Any]:
    """Check the manifest's kind and every file's hash; return the manifest."""
    path = directory / MANIFEST
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing manifest") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != kind or not isinstance(body.get("files"), dict):
        raise IntegrityError(f"{path}: not a {kind} manifest")
    for name, digest in body["files"].items():
        member = directory / safe_member(str(name))
        if not member.is_file():
            raise IntegrityError(f"{member}: listed in the manifest but missing")
        if sha256_file(member) != digest:
            raise IntegrityError(f"{member}: SHA-256 does not match the manifest (tampered or corrupt)")
    return body
