"""Regenerate the Python stubs of every .proto under fedfhe_proto (one source for both sides).

``python -m fedfhe_proto.generate`` rewrites the committed stubs;
``--out DIR`` writes them elsewhere (the staleness test compares the two);
``--check`` exits 1 when the committed stubs differ from a fresh generation.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_ROOT.parent  # the directory holding fedfhe_proto/, i.e. the protoc include root
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.proto"))


def generated_names(proto: Path) -> list[Path]:
    """The stub files protoc writes for ``proto``, relative to the include root."""
    rel = proto.relative_to(SOURCE_ROOT)
    return [rel.with_name(rel.stem + suffix) for suffix in SUFFIXES]


def generate(out: Path) -> list[Path]:
    """Run grpc_tools.protoc on every .proto; return the written files."""
    from grpc_tools import protoc  # lazy: grpcio-tools is a build-time dependency

    out.mkdir(parents=True, exist_ok=True)
    wkt = str(resources.files("grpc_tools") / "_proto")
    written: list[Path] = []
    for proto in proto_files():
        args = [
            "grpc_tools.protoc",
            f"-I{SOURCE_ROOT}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
        written += [out / name for name in generated_names(proto)]
    return written


def stale_files() -> list[Path]:
    """Committed stubs that differ from (or are missing next to) a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = []
        for proto in proto_files():
            for name in generated_names(proto):
                committed = SOURCE_ROOT / name
                if not committed.exists() or not filecmp.cmp(committed, fresh / name, shallow=False):
                    stale.append(committed)
        return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedfhe_proto.generate", description=__doc__)
    ap.add_argument("--out", type=Path, help="write the stubs under this directory instead of in place")
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path} (run python -m fedfhe_proto.generate)", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(args.out or SOURCE_ROOT):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
