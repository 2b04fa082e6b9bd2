"""The packages mirror processes (issue 28): no import cycles, no unexplained lazy imports, every subpackage says
which process it belongs to.

Read with ``ast`` from the source, so the checks see every module, imported or not, and fail naming the file.
A cycle hidden behind function-level imports is still a cycle for a reader; here each function-level import must
say why it is lazy (``# lazy: <reason>`` on its line), and the module-level graph must have no cycle.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"fedfhe_common": "common", "fedfhe_coordinator": "server", "fedfhe_owner": "client",
            "fedfhe_inference": "inference", "fedfhe_demo": "demo", "fedfhe_proto": "proto",
            "fedfhe_testbed": "testbed"}
GENERATED = ("_pb2.py", "_pb2_grpc.py")


def _module(path: Path, top: str) -> str:
    parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def sources() -> dict[str, Path]:
    """Every fedfhe module by dotted name (generated gRPC code left out)."""
    out = {}
    for package, top in PACKAGES.items():
        for path in sorted((ROOT / top / package).rglob("*.py")):
            if not path.name.endswith(GENERATED):
                out[_module(path, top)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in a function, not under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the fedfhe modules it imports at module level (``from P import M`` counts as P.M if M is one)."""
    modules = sources()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
                continue
            source = _absolute(module, path.name == "__init__.py", node)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in modules:
                    edges.add(target)
                elif source in modules:
                    edges.add(source)
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_through(sorted(component), graph))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _path_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A concrete cycle inside a strongly connected component, from its first module back to it."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return component


def unexplained_lazy_imports() -> list[str]:
    """``file:line: statement`` for each import inside a function without ``# lazy: <reason>`` on its lines."""
    found: list[str] = []
    for path in sources().values():
        text = path.read_text()
        _visit(ast.parse(text, str(path)), False, text.splitlines(), str(path.relative_to(ROOT)), found)
    return found


def _visit(node: ast.AST, in_function: bool, lines: list[str], name: str, found: list[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            _visit(child, True, lines, name, found)
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            span = lines[child.lineno - 1: child.end_lineno]
            if in_function and not any("# lazy:" in line for line in span):
                found.append(f"{name}:{child.lineno}: {span[0].strip()}")
        else:
            _visit(child, in_function, lines, name, found)


def test_the_module_level_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (break each by moving the shared piece where both can import it):\n" + "\n".join(
        " -> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_what_used_to_be_cycles() -> None:
    """The two cycles issue 28 broke, now one way each: the checks above would see them come back."""
    graph = import_graph()
    assert "fedfhe_coordinator.fhe.nbits" in graph["fedfhe_coordinator.fhe.compile"]
    assert "fedfhe_coordinator.fhe.concrete_model" in graph["fedfhe_coordinator.fhe.nbits"]
    assert "fedfhe_coordinator.serverapp.secure_training" in graph["fedfhe_coordinator.serverapp.server_app"]
    assert "fedfhe_coordinator.serverapp.rounds" in graph["fedfhe_coordinator.serverapp.secure_training"]


def test_every_function_level_import_says_why_it_is_lazy() -> None:
    found = unexplained_lazy_imports()
    assert not found, ("imports inside functions without '# lazy: <reason>' (hoist them to module level, or say "
                       "what the laziness avoids):\n" + "\n".join(found))


def test_every_subpackage_says_which_process_it_belongs_to() -> None:
    problems = []
    for package, top in PACKAGES.items():
        for folder in sorted(p for p in (ROOT / top / package).rglob("*") if p.is_dir()):
            if folder.name == "__pycache__" or folder == ROOT / top / package or not any(folder.glob("*.py")):
                continue
            init = folder / "__init__.py"
            if not init.exists():
                problems.append(f"{folder.relative_to(ROOT)}: no __init__.py")
                continue
            doc = ast.get_docstring(ast.parse(init.read_text()))
            if not doc or len(doc.splitlines()) != 1 or "process" not in doc.lower():
                problems.append(f"{init.relative_to(ROOT)}: needs a one-line docstring naming its process")
    assert not problems, "\n".join(problems)
