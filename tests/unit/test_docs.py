"""The README and docs/ say only what exists: every repository path, module and test they name, every
relative link and anchor, every subcommand of every console script in the CLI reference; and the
README stays short and opens with the two commands.

Paths count when they are in backticks, in a code block or a link target, and start with one of the
repository's top-level folders (``server/...``) or a package folder (``fedfhe_common/...``, read in its
top-level folder). Modules count as dotted names of a fedfhe package (``fedfhe_common.pki.crl_mark``,
``fedfhe_coordinator.fhe.concrete_model.calibration_set``). Tests count as ``test_*`` names in backticks, with or
without their file (``test_x.py::test_y``, ``::test_y``, ``tests/unit/test_x.py``; a trailing ``*``
is a prefix).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("common", "server", "client", "inference", "testbed", "demo", "deploy", "tests", "bench", "scripts", "docs",
       "proto")
PACKAGES = {"fedfhe_common": "common", "fedfhe_coordinator": "server", "fedfhe_owner": "client",
            "fedfhe_inference": "inference", "fedfhe_demo": "demo", "fedfhe_proto": "proto",
            "fedfhe_testbed": "testbed"}
TWO_COMMANDS = [
    "make demo     # set up everything, then run the whole pipeline on the embedded digits data",
    "make test     # set up everything, then run the test suite",
]
README_MAX_LINES = 200

_PATH = re.compile(rf"(?<![\w./~<>$-])((?:{'|'.join(TOP)}|{'|'.join(PACKAGES)})/[\w.*/-]*)")
_MODULE = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})(?:\.\w+)+)")
_TEST = re.compile(r"(?P<file>[\w/.-]*test_\w+\.py)?(?:::)?(?P<name>test_\w*\*?)?")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _split(doc: Path) -> tuple[list[str], list[str]]:
    """(lines outside fenced code blocks, lines inside them)."""
    prose, code, fenced = [], [], False
    for line in doc.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def _spans(doc: Path) -> list[str]:
    prose, _ = _split(doc)
    return [m.group(1).strip() for line in prose for m in _CODE_SPAN.finditer(line)]


def _links(doc: Path) -> list[str]:
    prose, _ = _split(doc)
    return [m.group(1) for line in prose for m in _LINK.finditer(line)]


def _ids(docs: list[Path]) -> list[str]:
    return [d.relative_to(ROOT).as_posix() for d in docs]


def _repo_path(text: str) -> Path:
    first, _, rest = text.partition("/")
    return ROOT / PACKAGES[first] / text if first in PACKAGES else ROOT / first / rest


def _exists(path: Path) -> bool:
    if "*" in path.as_posix():
        return any(path.parent.glob(path.name)) if "*" not in path.parent.as_posix() else any(
            ROOT.glob(path.relative_to(ROOT).as_posix()))
    return path.exists()


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_repository_path_the_docs_name_exists(doc: Path) -> None:
    prose, code = _split(doc)
    texts = _spans(doc) + code + [link.split("#")[0] for link in _links(doc)]
    named = {m.group(1).rstrip(".") for text in texts for m in _PATH.finditer(text)}
    missing = sorted(p for p in named if not _exists(_repo_path(p)))
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT / PACKAGES[parts[0]]
    for i in range(len(parts), 0, -1):
        stem = base.joinpath(*parts[:i])
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_module_and_attribute_the_docs_name_exists(doc: Path) -> None:
    wrong = []
    for name in sorted({m.group(1) for text in _spans(doc) for m in _MODULE.finditer(text)}):
        parts = name.split(".")
        found = _module_file(parts)
        if found is None:
            wrong.append(f"{name} (no module)")
            continue
        depth = len(found.relative_to(ROOT / PACKAGES[parts[0]]).with_suffix("").parts)
        depth -= found.name == "__init__.py"
        attrs = parts[depth:]
        # Defined there, or exported lazily (a package's ``__all__`` with a module ``__getattr__``).
        if attrs and not re.search(rf"^\s*(?:async def|def|class)\s+{attrs[0]}\b|^\s*{attrs[0]}\s*[:=]"
                                   rf"|^__all__\s*=.*[\"']{attrs[0]}[\"']", found.read_text(), re.MULTILINE):
            wrong.append(f"{name} ({attrs[0]} not defined in {found.relative_to(ROOT)})")
    assert not wrong, f"{doc.name} names modules that do not exist: {wrong}"


@cache
def _test_functions() -> dict[Path, frozenset[str]]:
    out = {}
    for path in (ROOT / "tests").rglob("*.py"):
        out[path] = frozenset(re.findall(r"^\s*(?:async\s+)?def\s+(test_\w+)", path.read_text(), re.MULTILINE))
    return out


def _defines(files: list[Path], name: str) -> bool:
    defined = set().union(*(_test_functions().get(f, frozenset()) for f in files))
    if name.endswith("*"):
        return any(d.startswith(name[:-1]) for d in defined)
    return name in defined


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_test_the_docs_name_exists(doc: Path) -> None:
    tests = ROOT / "tests"
    wrong = []
    for span in _spans(doc):
        m = _TEST.fullmatch(span)
        if m is None or not (m.group("file") or m.group("name")):
            continue
        file, name = m.group("file"), m.group("name")
        if file:
            files = [ROOT / file] if "/" in file else sorted(tests.rglob(file))
            files = [f for f in files if f.is_file() and tests in f.resolve().parents]
            if not files:
                wrong.append(f"{span}: no such test file under tests/")
                continue
        else:
            files = list(_test_functions())
        if name and not _defines(files, name):
            wrong.append(f"{span}: no test named {name}")
    assert not wrong, f"{doc.name} names tests that do not exist: {wrong}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def _anchors(doc: Path) -> frozenset[str]:
    prose, _ = _split(doc)
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = _slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    wrong = []
    for link in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            wrong.append(f"{link}: no such file")
        elif ROOT not in path.parents and path != ROOT:
            wrong.append(f"{link}: outside the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            wrong.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not wrong, f"{doc.name} has broken links: {wrong}"


def test_the_readme_is_short_and_opens_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the details belong in docs/"
    assert lines[0].startswith("# "), lines[0]
    body = [line for line in lines[1:] if line.strip()]
    assert body[:4] == ["```sh", *TWO_COMMANDS, "```"], body[:4]
    assert "│ encrypted predictions equal simulated" in README.read_text(), "the demo's closing table is missing"


def test_every_document_in_docs_is_reachable_from_the_readme() -> None:
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _links(README)}
    index = ROOT / "docs" / "README.md"
    if index.exists():
        linked |= {(index.parent / link.partition("#")[0]).resolve() for link in _links(index)}
    orphans = [d.name for d in DOCS[1:] if d.resolve() not in linked]
    assert not orphans, f"docs not linked from README.md or docs/README.md: {orphans}"


@cache
def _cli_reference():  # scripts/ is not a package: load the generator the way it runs
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cli_reference", module)
    spec.loader.exec_module(module)
    return module


@cache
def _commands() -> tuple[tuple[str, ...], ...]:
    """Every console script and subcommand, as the words of its command line, from the parsers themselves."""
    ref = _cli_reference()
    return tuple(tuple(words) for name, parser in ref.programs() for words, _, _ in ref.walk([name], parser))


def test_the_cli_reference_lists_every_subcommand_of_every_console_script() -> None:
    commands = _commands()
    assert {c[0] for c in commands} >= {"fedfhe-coordinator", "fedfhe-owner", "fedfhe-inference", "fedfhe-pki"}
    assert any(len(c) > 1 for c in commands), "no subcommands found: the parsers were not read"
    prose, _ = _split(ROOT / "docs" / "cli.md")
    headings = {m.group(1) for line in prose if (m := re.match(r"#{2,6}\s+(fedfhe-\S+(?: \S+)*)\s*$", line))}
    wanted = {" ".join(c) for c in commands}
    missing, stale = sorted(wanted - headings), sorted(headings - wanted)
    assert not missing, f"docs/cli.md lacks {missing}: run scripts/cli_reference.py"
    assert not stale, f"docs/cli.md documents commands that no longer exist: {stale}: run scripts/cli_reference.py"


def test_what_runs_where_lists_every_subcommand_of_the_scripts_it_names() -> None:
    """A row naming one subcommand of a script names them all (the table once listed 7 of 10)."""
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    table = guide.split("\n## What runs where\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) >= 5, "docs/operator-guide.md has no 'What runs where' table"
    wrong = []
    for prog in {c[0] for c in _commands()}:
        subs = {c[1] for c in _commands() if c[0] == prog and len(c) == 2}
        for row in rows:
            if subs and f"`{prog} " in row:
                missing = sorted(s for s in subs if f"`{s}`" not in row and f"`{prog} {s}`" not in row)
                if missing:
                    wrong.append(f"{prog}: {missing}")
    assert not wrong, f"docs/operator-guide.md's 'What runs where' misses subcommands: {wrong}"
