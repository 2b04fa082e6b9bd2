"""Each fedfhe package declares exactly the distributions its modules import (read statically).

For every package folder (the Makefile's PKGS), every ``.py`` file under its import package is
parsed with ``ast`` and each absolute import (``import a.b``, ``from a.b import c``, also inside
functions) is mapped to the distribution that provides it, through
``importlib.metadata.packages_distributions()`` on the installed venv. The standard library and the
package itself are ignored. A name that several distributions share (the ``concrete`` namespace:
concrete-python ships ``concrete.fhe``, concrete-ml ``concrete.ml``) goes to the one whose files
hold the imported submodule.

The rule, for each package (names normalised as in PEP 503):

- an import at module level (not inside a function) runs whenever the module is imported: its
  distribution is in ``[project] dependencies``;
- an import inside a function runs only when that function does: its distribution is in
  ``dependencies`` or in one of the ``[project.optional-dependencies]`` extras (for example
  ``fhe = ["concrete-ml==1.9.0", ...]``: the compile and encrypted-inference code imports Concrete
  lazily);
- nothing else is declared: ``dependencies`` plus every extra is exactly the imported set, and no
  distribution is both required and in an extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def _makefile_packages() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    return re.search(r"^PKGS\s*:=\s*(.+)$", text, re.MULTILINE).group(1).split()


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@cache
def _distribution_files(dist: str) -> tuple[str, ...]:
    return tuple(str(f) for f in metadata.distribution(dist).files or ())


def _distribution(module: str) -> str | None:
    """The normalised distribution that provides ``module`` (dotted), or None for the standard library."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return None
    dists = sorted(set(_packages_distributions().get(top, [])))
    if not dists:
        raise AssertionError(f"no installed distribution provides {module!r}")
    if len(dists) > 1:  # a namespace shared by several distributions: the one holding the submodule
        parts = module.split(".")
        prefix = "/".join(parts[:2])
        holders = [d for d in dists if any(f == f"{prefix}.py" or f.startswith(f"{prefix}/")
                                           for f in _distribution_files(d))]
        assert len(holders) == 1, f"{module!r}: provided by {dists}, cannot tell which ({holders})"
        dists = holders
    return _normalise(dists[0])


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, inside_a_function) for each absolute import; ``from a import b`` yields ``a.b``."""
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                out.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.extend((f"{child.module}.{alias.name}", in_function) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return out


def _imported(package_dir: Path, own: set[str]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Distributions imported at module level and only inside functions, each with the files that do."""
    module_level: dict[str, set[str]] = {}
    in_functions: dict[str, set[str]] = {}
    for top in sorted(p for p in package_dir.iterdir() if (p / "__init__.py").is_file()):
        for path in sorted(top.rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for module, in_function in _imports(ast.parse(path.read_bytes(), filename=rel)):
                dist = _distribution(module)
                if dist is None or dist in own:
                    continue
                (in_functions if in_function else module_level).setdefault(dist, set()).add(rel)
    for dist in module_level:
        in_functions.pop(dist, None)
    return module_level, in_functions


def test_the_makefile_installs_every_package() -> None:
    found = sorted(p.parent.name for p in ROOT.glob("*/pyproject.toml"))
    assert sorted(_makefile_packages()) == found


@pytest.mark.parametrize("package", _makefile_packages())
def test_declared_dependencies_are_exactly_the_imports(package: str) -> None:
    project = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]
    own = {_normalise(project["name"])}
    required = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras = {_requirement_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    module_level, in_functions = _imported(ROOT / package, own)

    problems = []
    for dist, files in sorted(module_level.items()):
        if dist not in required:
            problems.append(f"{dist}: imported at module level ({', '.join(sorted(files))}), not in dependencies")
    for dist, files in sorted(in_functions.items()):
        if dist not in required | extras:
            problems.append(f"{dist}: imported in functions ({', '.join(sorted(files))}), declared nowhere")
    for dist in sorted((required | extras) - module_level.keys() - in_functions.keys()):
        problems.append(f"{dist}: declared, never imported")
    for dist in sorted(required & extras):
        problems.append(f"{dist}: both in dependencies and in an extra")
    assert not problems, f"{package}/pyproject.toml:\n" + "\n".join(problems)
