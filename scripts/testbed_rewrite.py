"""Rewrite every reference to the test bed modules that moved out of fedfhe_demo (issue 28).

The modules themselves were moved with ``git mv`` (demo/fedfhe_demo/<m>.py ->
testbed/fedfhe_testbed/<m>.py, schemas/ too); this script rewrites what names them:
imports and dotted names in ``*.py``, repository paths and module names in the
Markdown docs, the Makefile's PKGS, ruff's first-party list, and the
``fedfhe-partition`` entry point (it leaves demo/pyproject.toml for
testbed/pyproject.toml). Then ``ruff --fix --select I`` re-sorts the imports of the
Python files it changed (a relative import became an absolute first-party one).

Idempotent: each rule matches only the old spelling, so a second run changes
nothing (and says so). Run from anywhere: ``python scripts/testbed_rewrite.py``
(``--check`` lists what would change and exits 1 if anything would).
bench/results/*.json are left alone: they record past runs verbatim.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_PKG, NEW_PKG = "fedfhe_demo", "fedfhe_testbed"
OLD_DIR, NEW_DIR = "demo/fedfhe_demo", "testbed/fedfhe_testbed"

# old module -> new module: the whole table of what moved.
MODULES: dict[str, str] = {
    "fedfhe_demo.cluster": "fedfhe_testbed.cluster",
    "fedfhe_demo.inference_node": "fedfhe_testbed.inference_node",
    "fedfhe_demo.partition": "fedfhe_testbed.partition",
    "fedfhe_demo.partition_cli": "fedfhe_testbed.partition_cli",
    "fedfhe_demo.datasets": "fedfhe_testbed.datasets",
    "fedfhe_demo.tabular": "fedfhe_testbed.tabular",
    "fedfhe_demo.reference": "fedfhe_testbed.reference",
}
# old module.symbol -> new module.symbol: functions that moved between modules.
SYMBOLS: dict[str, str] = {
    # the inference.yaml of a Cluster's node: tests build it without the demo's FHE phases
    "fedfhe_demo.fhe_phases.inference_config": "fedfhe_testbed.cluster.inference_config",
}
# repository paths: old -> new (data files moved with the modules).
PATHS: dict[str, str] = {
    **{f"{OLD_DIR}/{old.split('.')[1]}.py": f"{NEW_DIR}/{new.split('.')[1]}.py" for old, new in MODULES.items()},
    f"{OLD_DIR}/schemas": f"{NEW_DIR}/schemas",
}
ENTRY_POINT = 'fedfhe-partition = "fedfhe_testbed.partition_cli:main"'

SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".sh", ".j2", ".txt"}
NAMES = {"Makefile"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".ruff_cache", ".pytest_cache"}
SKIP = {Path("scripts/testbed_rewrite.py"), Path("bench/results")}


def _sub(pattern: str, repl: str | Callable[[re.Match[str]], str]) -> Callable[[str], str]:
    rx = re.compile(pattern, re.MULTILINE)
    return lambda text: rx.sub(repl, text)


def _symbol_rules() -> list[Callable[[str], str]]:
    rules = []
    for old, new in SYMBOLS.items():
        old_mod, name = old.rsplit(".", 1)
        new_mod, new_name = new.rsplit(".", 1)
        # `from old_mod import name` (alone on its line) and the dotted spelling in prose.
        rules.append(_sub(rf"^(\s*)from {re.escape(old_mod)} import {name}$", rf"\1from {new_mod} import {new_name}"))
        rules.append(_sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new))
    return rules


def _module_rules() -> list[Callable[[str], str]]:
    # longest first is not needed: (?!\w) stops fedfhe_demo.partition matching fedfhe_demo.partition_cli
    return [_sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new) for old, new in MODULES.items()]


def _path_rules() -> list[Callable[[str], str]]:
    return [_sub(rf"(?<![\w]){re.escape(old)}(?![\w-])", new) for old, new in PATHS.items()]


def _demo_relative_imports(text: str) -> str:
    """In what stays in fedfhe_demo, ``from .cluster import X`` becomes an absolute fedfhe_testbed import."""
    moved = "|".join(re.escape(m.split(".")[1]) for m in MODULES)
    return re.sub(rf"^(\s*)from \.({moved}) import ", rf"\1from {NEW_PKG}.\2 import ", text, flags=re.MULTILINE)


def _testbed_resources(text: str) -> str:
    """The schemas are package data of fedfhe_testbed now."""
    return text.replace(f'resources.files("{OLD_PKG}")', f'resources.files("{NEW_PKG}")')


def _console_distribution(text: str) -> str:
    """fedfhe_common.runtime.console's script -> distribution table (for --version)."""
    return text.replace('"fedfhe-partition": "fedfhe-demo"', '"fedfhe-partition": "fedfhe-testbed"')


def _makefile_pkgs(text: str) -> str:
    def add(m: re.Match[str]) -> str:
        pkgs = m.group(2).split()
        if "testbed" in pkgs:
            return m.group(0)
        pkgs.insert(pkgs.index("demo") if "demo" in pkgs else len(pkgs), "testbed")
        return m.group(1) + " ".join(pkgs)

    return re.sub(r"^(PKGS\s*:=\s*)(.+)$", add, text, count=1, flags=re.MULTILINE)


def _ruff_first_party(text: str) -> str:
    return text if f'"{NEW_PKG}"' in text else text.replace(f'"{OLD_PKG}"]', f'"{OLD_PKG}", "{NEW_PKG}"]')


def _demo_pyproject(text: str) -> str:
    """fedfhe-partition is the test bed's console script now: drop it (and an emptied section) from the demo."""
    text = re.sub(r'^fedfhe-partition\s*=\s*"[^"]*"\n', "", text, flags=re.MULTILINE)
    text = re.sub(r"^\[project\.scripts\]\n(?=\n|\[|\Z)\n?", "", text, flags=re.MULTILINE)
    # schemas/ moved: the demo ships no package data of its own any more
    return re.sub(r'^\[tool\.setuptools\.package-data\]\nfedfhe_demo = \["schemas/\*\.yaml"\]\n\n?', "", text,
                  flags=re.MULTILINE)


def rules_for(rel: Path) -> list[Callable[[str], str]]:
    rules = [*_symbol_rules(), *_module_rules(), *_path_rules()]
    if rel.suffix == ".py":
        rules.append(_console_distribution)
        if rel.parts[:2] == ("demo", "fedfhe_demo"):
            rules.append(_demo_relative_imports)
        if rel.parts[:2] == ("testbed", "fedfhe_testbed"):
            rules.append(_testbed_resources)
    if rel == Path("Makefile"):
        rules.append(_makefile_pkgs)
    if rel == Path("ruff.toml"):
        rules.append(_ruff_first_party)
    if rel == Path("demo/pyproject.toml"):
        rules.append(_demo_pyproject)
    return rules


def files() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if SKIP_DIRS & set(rel.parts) or any(rel == s or s in rel.parents for s in SKIP):
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name in NAMES):
            out.append(rel)
    return out


def check_layout() -> None:
    """Fail early, naming what is missing, if the git mv has not been done or was undone."""
    missing = [new for new in PATHS.values() if not (ROOT / new).exists()]
    left = [old for old in PATHS if (ROOT / old).exists()]
    if missing or left:
        sys.exit(f"testbed_rewrite: move the modules first (git mv): missing {missing}, still present {left}")
    pyproject = ROOT / "testbed" / "pyproject.toml"
    if not pyproject.exists() or ENTRY_POINT not in pyproject.read_text():
        sys.exit(f"testbed_rewrite: {pyproject} must declare the console script: {ENTRY_POINT}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="list what would change, write nothing; exit 1 if any")
    args = ap.parse_args()
    check_layout()
    changed: list[Path] = []
    for rel in files():
        path = ROOT / rel
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        new = text
        for rule in rules_for(rel):
            new = rule(new)
        if new != text:
            changed.append(rel)
            if not args.check:
                path.write_text(new)
    for rel in changed:
        print(("would rewrite " if args.check else "rewrote ") + str(rel))
    py = [str(ROOT / rel) for rel in changed if rel.suffix == ".py"]
    if py and not args.check:
        ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
        # re-sort imports only: an import block that moved from relative to first-party changes group
        subprocess.run([ruff, "check", "--quiet", "--fix", "--select", "I", *py], cwd=ROOT, check=False)
    if not changed:
        print("testbed_rewrite: nothing to rewrite")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
