"""SHA-256 manifests: how a training artifact or FHE bundle proves it is intact.

Used for everything that crosses a host boundary instead of pickle: the
receiver verifies every listed file before it reads any of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fedfhe_common.runtime.errors import IntegrityError
from fedfhe_common.runtime.fileio import write_atomic

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


FORMAT_VERSION = 1


def canonical_body(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(directory: Path, kind: str, files: list[str], meta: dict[str, Any]) -> Path:
    entries = {safe_member(f): sha256_file(directory / f) for f in files}
    body = {"kind": kind, "format_version": FORMAT_VERSION, "files": entries, **meta}
    path = directory / MANIFEST
    write_atomic(path, canonical_body(body))
    return path


def verify_manifest(directory: Path, kind: str, raw: bytes | None = None) -> dict[str, Any]:
    """Check the manifest's kind and every file's hash; return the manifest.

    The manifest itself must be byte for byte what write_manifest writes for its
    content, so no byte of it can change unnoticed either. Members must be plain
    files inside ``directory`` (no path components, no symlinks). ``raw``: the
    manifest bytes already read (and signature-checked) by the caller.
    """
    path = directory / MANIFEST
    try:
        raw = path.read_bytes() if raw is None else raw
        body = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing manifest") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, absurd numbers
        raise IntegrityError(f"{path}: unreadable manifest: {str(exc)[:200]}") from None
    if not isinstance(body, dict) or body.get("kind") != kind or not isinstance(body.get("files"), dict):
        raise IntegrityError(f"{path}: not a {kind} manifest")
    if body.get("format_version") != FORMAT_VERSION or isinstance(body.get("format_version"), bool):
        raise IntegrityError(f"{path}: unsupported manifest format_version {body.get('format_version')!r}")
    names = [safe_member(str(name)) for name in body["files"]]
    try:
        canonical = canonical_body(body) == raw
    except (ValueError, TypeError):
        canonical = False
    if not canonical:
        raise IntegrityError(f"{path}: edited by hand or corrupt (not the form fedfhe writes)")
    for name in names:
        member = directory / name
        digest = body["files"][name]
        try:
            if member.is_symlink():
                raise IntegrityError(f"{member}: is a symbolic link, refused")
            if not member.is_file():
                raise IntegrityError(f"{member}: listed in the manifest but missing")
            actual = sha256_file(member)
        except OSError as exc:
            raise IntegrityError(f"{member}: cannot read: {exc.strerror or exc}") from None
        if actual != digest:
            raise IntegrityError(f"{member}: SHA-256 does not match the manifest (tampered or corrupt)")
    return body
