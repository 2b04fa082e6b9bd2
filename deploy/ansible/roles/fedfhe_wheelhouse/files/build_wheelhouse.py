#!/usr/bin/env python3
"""Build (or refresh) the wheelhouse the hosts install from; they have no internet.

``pip wheel`` of the fedfhe packages and every dependency into one directory,
plus ``SHA256SUMS`` (what the hosts compare to decide whether to copy and
reinstall) and ``.fedfhe-wheelhouse.json`` (the digest of the inputs).

Idempotent: when the package sources, the requirement list and the Python
version are unchanged and every listed wheel is present, nothing is rebuilt and
the output says ``"changed": false``. A rebuild first tries offline (--no-index,
only the wheels already here: a source change costs seconds), and only when a
new dependency is missing asks the package index. Each package is built from a
clean copy of its source, so stale build/ directories never leak into a wheel.

Prints one JSON object: {"changed": bool, "wheels": N, "digest": "...", "seconds": S}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKIP_DIRS = {"build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
STAMP = ".fedfhe-wheelhouse.json"


def source_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if p.is_file() and p.suffix not in {".pyc", ".pyo"}:
            out.append(p)
    return out


def digest_inputs(source: Path, packages: list[str], extra: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"packages": packages, "extra": extra, "python": sys.version_info[:2]}).encode())
    for spec in packages:
        root = source / spec.split("[", 1)[0]
        for f in source_files(root):
            h.update(str(f.relative_to(source)).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def sha256sums(wheelhouse: Path) -> str:
    lines = []
    for whl in sorted(wheelhouse.glob("*.whl")):
        h = hashlib.sha256()
        with whl.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        lines.append(f"{h.hexdigest()}  {whl.name}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="the fedfhe source tree")
    ap.add_argument("--out", type=Path, required=True, help="the wheelhouse directory")
    ap.add_argument("--package", action="append", default=[], help="package dir with extras, e.g. server[fhe]")
    ap.add_argument("--extra", action="append", default=[], help="another requirement to include, e.g. uv")
    ap.add_argument("--pip-arg", action="append", default=[], help="passed to pip wheel (e.g. --index-url=...)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    source, out = args.source.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    digest = digest_inputs(source, args.package, args.extra)
    stamp = out / STAMP
    if stamp.exists():
        old = json.loads(stamp.read_text())
        if old.get("digest") == digest and all((out / w).exists() for w in old.get("wheels", [])) \
                and (out / "SHA256SUMS").exists():
            print(json.dumps({"changed": False, "wheels": len(old["wheels"]), "digest": digest,
                              "seconds": round(time.monotonic() - started, 1)}))
            return 0
    with tempfile.TemporaryDirectory(prefix="fedfhe-wheelhouse-") as tmp:
        reqs = []
        for spec in args.package:
            name, _, extras = spec.partition("[")
            dst = Path(tmp) / name
            shutil.copytree(source / name, dst, ignore=shutil.ignore_patterns(
                *SKIP_DIRS, "*.egg-info", "*.pyc"))
            reqs.append(f"{dst}[{extras}" if extras else str(dst))
        reqs += args.extra
        # Our own packages keep their version across source changes: drop their old wheels.
        for spec in args.package:
            for old_whl in out.glob(f"fedfhe_{spec.split('[', 1)[0]}-*.whl"):
                old_whl.unlink()
        base = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "-w", str(out),
                "--find-links", str(out), *args.pip_arg]
        offline = subprocess.run([*base, "--no-index", *reqs], capture_output=True, text=True)
        if offline.returncode != 0:
            online = subprocess.run([*base, *reqs], capture_output=True, text=True)
            if online.returncode != 0:
                sys.stderr.write(online.stdout[-4000:] + online.stderr[-4000:])
                return online.returncode
    sums = sha256sums(out)
    (out / "SHA256SUMS").write_text(sums)
    wheels = [line.split("  ", 1)[1] for line in sums.splitlines()]
    stamp.write_text(json.dumps({"digest": digest, "wheels": wheels}, indent=1))
    print(json.dumps({"changed": True, "wheels": len(wheels), "digest": digest,
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
