"""Issue 28: move fedfhe's flat modules into subpackages that mirror processes, and rewrite every reference.

Driven by TABLE (old dotted module -> new dotted module). Idempotent: run it again after merging a branch
that still uses the old paths and it moves nothing twice, rewrites only what still names an old path.

  python scripts/restructure_rewrite.py [--only fedfhe_coordinator,...] [--dry-run]

Steps, in order:
  1. relative imports in the moved packages become absolute (resolved against the file's OLD module path,
     so code merged from a branch that predates the move still resolves right);
  2. `git mv` old file -> new file (only when the old file exists and the new one does not), and each new
     subpackage gets an __init__.py with a one-line docstring naming its process;
  3. every tracked text file: `from P import M` where P.M moved becomes `from NEWPARENT import LEAF as M`;
     `from OLD import x` becomes `from NEW import x`; any other dotted name that starts with an old module
     (strings, mock targets, docs, TOML entry points, Ansible) and any `fedfhe_x/old.py` path is rewritten.
     A name whose longest known prefix is already a NEW module (`fedfhe_common.pki.ca`) is left alone;
     that rule is what makes a second run a no-op even where an old module became a package
     (`fedfhe_common.pki` -> package `fedfhe_common/pki/`).
Run `ruff check --fix --select I` afterwards: split imports may need re-sorting.

After merging a branch that predates the move: run this script, then `ruff check --fix --select I .`, then
`pytest tests/unit/test_import_structure.py` (new function-level imports need `# lazy: <reason>` or hoisting),
then `pip install -e common` (the fedfhe-pki entry point moved to fedfhe_common.pki.pki_cli:main).
Test a worktree with a venv of its own: flower-supernode runs as `python -I -m ...supernode.flower_supernode`,
and -I ignores PYTHONPATH, so a SuperNode imports whatever the venv's editable install points at. A copied
venv's bin/pip still has the original venv's python in its shebang: run `<copy>/bin/python -m pip`, never
`<copy>/bin/pip`, or the install lands in the original venv.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRS = {"fedfhe_coordinator": "server", "fedfhe_owner": "client", "fedfhe_common": "common"}

# Subpackage -> the one-line docstring of its __init__.py (which process runs it).
PACKAGES: dict[str, str] = {
    "fedfhe_coordinator.serverapp": "The Flower ServerApp process (the SuperLink starts it): rounds, artifact.",
    "fedfhe_coordinator.train": "The `fedfhe-coordinator train` process: drives `flwr run`, follows the run, reports.",
    "fedfhe_coordinator.superlink": "The `fedfhe-coordinator superlink` process: flower-superlink, Prometheus metrics.",
    "fedfhe_coordinator.fhe": "The coordinator's FHE command processes: compile, choose-n-bits, tune, train-local.",
    "fedfhe_owner.clientapp": "The owner's ClientApp processes: flwr-clientapp door, launcher, server, the app.",
    "fedfhe_owner.supernode": "The `fedfhe-owner supernode` process: flower-supernode, launched and repaired.",
    "fedfhe_owner.predict": "The `fedfhe-owner predict` process: keys, encryption, the inference client, decoding.",
    "fedfhe_common.contracts": "Formats that cross hosts, used by every process: records, artifacts, bundles.",
    "fedfhe_common.runtime": "Process plumbing every fedfhe process uses: config, logs, console, files, children.",
    "fedfhe_common.pki": "PKI and release signing: the `fedfhe-pki` process, and the checks every service runs.",
    "fedfhe_common.ml": "Model maths of the ServerApp, ClientApp and FHE command processes: families, scores, data.",
}

TABLE: dict[str, str] = {
    # coordinator: the ServerApp process
    "fedfhe_coordinator.server_app": "fedfhe_coordinator.serverapp.server_app",
    "fedfhe_coordinator.secure_training": "fedfhe_coordinator.serverapp.secure_training",
    "fedfhe_coordinator.statistics_round": "fedfhe_coordinator.serverapp.statistics_round",
    "fedfhe_coordinator.boosting_run": "fedfhe_coordinator.serverapp.boosting_run",
    "fedfhe_coordinator.tree_recording": "fedfhe_coordinator.serverapp.tree_recording",
    "fedfhe_coordinator.tree_strategy": "fedfhe_coordinator.serverapp.tree_strategy",
    "fedfhe_coordinator.federated_trees": "fedfhe_coordinator.serverapp.federated_trees",
    "fedfhe_coordinator.privacy": "fedfhe_coordinator.serverapp.privacy",
    "fedfhe_coordinator.wire_bytes": "fedfhe_coordinator.serverapp.wire_bytes",
    "fedfhe_coordinator.prompt_grid": "fedfhe_coordinator.serverapp.prompt_grid",
    # coordinator: `train`
    "fedfhe_coordinator.flwr_cli": "fedfhe_coordinator.train.flwr_cli",
    "fedfhe_coordinator.training": "fedfhe_coordinator.train.training",
    "fedfhe_coordinator.progress": "fedfhe_coordinator.train.progress",
    "fedfhe_coordinator.report": "fedfhe_coordinator.train.report",
    # coordinator: `superlink`
    "fedfhe_coordinator.superlink": "fedfhe_coordinator.superlink.launch",
    "fedfhe_coordinator.metrics": "fedfhe_coordinator.superlink.metrics",
    # coordinator: FHE commands
    "fedfhe_coordinator.compile": "fedfhe_coordinator.fhe.compile",
    "fedfhe_coordinator.nbits": "fedfhe_coordinator.fhe.nbits",
    "fedfhe_coordinator.tune": "fedfhe_coordinator.fhe.tune",
    "fedfhe_coordinator.fhe_commands": "fedfhe_coordinator.fhe.fhe_commands",
    "fedfhe_coordinator.local_training": "fedfhe_coordinator.fhe.local_training",
    # owner: ClientApp processes
    "fedfhe_owner.client_app": "fedfhe_owner.clientapp.client_app",
    "fedfhe_owner.clientapp_door": "fedfhe_owner.clientapp.clientapp_door",
    "fedfhe_owner.clientapp_launcher": "fedfhe_owner.clientapp.clientapp_launcher",
    "fedfhe_owner.clientapp_server": "fedfhe_owner.clientapp.clientapp_server",
    "fedfhe_owner.secure_client": "fedfhe_owner.clientapp.secure_client",
    "fedfhe_owner.run_ledger": "fedfhe_owner.clientapp.run_ledger",
    "fedfhe_owner.tree_training": "fedfhe_owner.clientapp.tree_training",
    "fedfhe_owner.holdout": "fedfhe_owner.clientapp.holdout",
    # owner: supernode
    "fedfhe_owner.supernode": "fedfhe_owner.supernode.launch",
    "fedfhe_owner.flower_supernode": "fedfhe_owner.supernode.flower_supernode",
    # owner: predict
    "fedfhe_owner.predict": "fedfhe_owner.predict.encrypted",
    "fedfhe_owner.predict_commands": "fedfhe_owner.predict.predict_commands",
    "fedfhe_owner.predict_io": "fedfhe_owner.predict.predict_io",
    "fedfhe_owner.inference_client": "fedfhe_owner.predict.inference_client",
    "fedfhe_owner.keys": "fedfhe_owner.predict.keys",
    "fedfhe_owner.key_reuse": "fedfhe_owner.predict.key_reuse",
    "fedfhe_owner.decode": "fedfhe_owner.predict.decode",
    # common: formats between hosts
    "fedfhe_common.fl_contract": "fedfhe_common.contracts.fl_contract",
    "fedfhe_common.transport": "fedfhe_common.contracts.transport",
    "fedfhe_common.bundle": "fedfhe_common.contracts.bundle",
    "fedfhe_common.bundle_content": "fedfhe_common.contracts.bundle_content",
    "fedfhe_common.mlir_check": "fedfhe_common.contracts.mlir_check",
    "fedfhe_common.manifest": "fedfhe_common.contracts.manifest",
    "fedfhe_common.fhe_wire": "fedfhe_common.contracts.fhe_wire",
    "fedfhe_common.artifact": "fedfhe_common.contracts.artifact",
    "fedfhe_common.tree_artifact": "fedfhe_common.contracts.tree_artifact",
    "fedfhe_common.booster_json": "fedfhe_common.contracts.booster_json",
    "fedfhe_common.schema": "fedfhe_common.contracts.schema",
    "fedfhe_common.typed_table": "fedfhe_common.contracts.typed_table",
    "fedfhe_common.key_params": "fedfhe_common.contracts.key_params",
    # common: process plumbing
    "fedfhe_common.procs": "fedfhe_common.runtime.procs",
    "fedfhe_common.logs": "fedfhe_common.runtime.logs",
    "fedfhe_common.console": "fedfhe_common.runtime.console",
    "fedfhe_common.output": "fedfhe_common.runtime.output",
    "fedfhe_common.exit_status": "fedfhe_common.runtime.exit_status",
    "fedfhe_common.errors": "fedfhe_common.runtime.errors",
    "fedfhe_common.fileio": "fedfhe_common.runtime.fileio",
    "fedfhe_common.relay": "fedfhe_common.runtime.relay",
    "fedfhe_common.config": "fedfhe_common.runtime.config",
    "fedfhe_common.config_check": "fedfhe_common.runtime.config_check",
    # common: PKI and signing
    "fedfhe_common.pki": "fedfhe_common.pki.ca",
    "fedfhe_common.pki_cli": "fedfhe_common.pki.pki_cli",
    "fedfhe_common.pki_inventory": "fedfhe_common.pki.pki_inventory",
    "fedfhe_common.pki_passphrase": "fedfhe_common.pki.pki_passphrase",
    "fedfhe_common.pki_request": "fedfhe_common.pki.pki_request",
    "fedfhe_common.crl_mark": "fedfhe_common.pki.crl_mark",
    "fedfhe_common.cert_metrics": "fedfhe_common.pki.cert_metrics",
    "fedfhe_common.release": "fedfhe_common.pki.release",
    "fedfhe_common.app_approval": "fedfhe_common.pki.app_approval",
    # common: model maths
    "fedfhe_common.models": "fedfhe_common.ml.models",
    "fedfhe_common.newton": "fedfhe_common.ml.newton",
    "fedfhe_common.preprocessing": "fedfhe_common.ml.preprocessing",
    "fedfhe_common.data": "fedfhe_common.ml.data",
    "fedfhe_common.schema_draft": "fedfhe_common.ml.schema_draft",
    "fedfhe_common.scoring": "fedfhe_common.ml.scoring",
    "fedfhe_common.score_sums": "fedfhe_common.ml.score_sums",
    "fedfhe_common.fedxgb": "fedfhe_common.ml.fedxgb",
    "fedfhe_common.booster_eval": "fedfhe_common.ml.booster_eval",
    "fedfhe_common.secure_target": "fedfhe_common.ml.secure_target",
}

# Names that moved out of a module (to break an import cycle), keyed by both their old and their first new home.
NAMES: dict[str, str] = {}
for _name in ("CALIBRATION_ROWS", "calibration_set", "concrete_class", "to_concrete"):
    for _old in ("fedfhe_coordinator.compile", "fedfhe_coordinator.fhe.compile"):
        NAMES[f"{_old}.{_name}"] = f"fedfhe_coordinator.fhe.concrete_model.{_name}"
for _name in ("node_owners", "NodesLost", "TrainingStopped", "OwnersChanged", "BoundedGrid", "client_scores",
              "ReplyPolicy", "cap_shares", "clip_update", "Recording", "RecordingFedAvg", "RecordingNewton",
              "make_strategy", "missing_owners", "wait_for_nodes", "final_evaluation"):
    for _old in ("fedfhe_coordinator.server_app", "fedfhe_coordinator.serverapp.server_app"):
        NAMES[f"{_old}.{_name}"] = f"fedfhe_coordinator.serverapp.rounds.{_name}"

TEXT_SUFFIXES = {".py", ".pyi", ".md", ".toml", ".yml", ".yaml", ".j2", ".cfg", ".ini", ".txt", ".sh", ".json"}
TEXT_NAMES = {"Makefile", "run", "fedfhe-service"}
SELF = Path(__file__).resolve()


def _file(module: str) -> Path:
    parts = module.split(".")
    return ROOT / DIRS[parts[0]] / Path(*parts).with_suffix(".py")


def _module_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT)
    if len(rel.parts) < 3 or rel.parts[1] not in DIRS or DIRS[rel.parts[1]] != rel.parts[0]:
        return None
    parts = list(rel.with_suffix("").parts[1:])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Rewriter:
    """Old->new names and paths, with the rule that keeps a second run from moving anything twice."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.new = set(table.values()) | set(PACKAGES)
        self.reverse = {v: k for k, v in table.items()}
        roots = sorted({m.split(".")[0] for m in table})
        self.dotted = re.compile(rf"(?<![\w.])((?:{'|'.join(roots)})(?:\.[A-Za-z_]\w*)+)")
        self.paths = re.compile(rf"(?<![\w.])((?:{'|'.join(roots)})(?:/\w+)+\.py)\b")

    def _longest(self, parts: list[str], names: set[str] | dict[str, str]) -> int:
        return max((k for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in names), default=0)

    def name(self, dotted: str) -> str:
        parts = dotted.split(".")
        old = self._longest(parts, self.table)
        if not old or self._longest(parts, self.new) > old:
            return dotted
        return ".".join([self.table[".".join(parts[:old])], *parts[old:]])

    def text(self, text: str) -> str:
        text = self.dotted.sub(lambda m: self.name(m.group(1)), text)

        def path(m: re.Match[str]) -> str:
            mod = m.group(1)[: -len(".py")].replace("/", ".")
            return self.table[mod].replace(".", "/") + ".py" if mod in self.table else m.group(1)

        return self.paths.sub(path, text)

    def import_from(self, module: str, names: list[ast.alias]) -> list[tuple[str, list[str]]] | None:
        """The statements replacing `from module import names`, or None when it stays as it is."""
        out: dict[str, list[str]] = {}
        changed = False
        for alias in names:
            full = f"{module}.{alias.name}"
            shown = alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"
            if full in self.table:  # before the NEW check: `from fedfhe_common import pki` means the old module
                parent, _, leaf = self.table[full].rpartition(".")
                local = alias.asname or alias.name
                out.setdefault(parent, []).append(leaf if leaf == local else f"{leaf} as {local}")
                changed = True
            elif full in self.new:
                out.setdefault(module, []).append(shown)
            else:
                target = self.name(module)
                changed |= target != module
                out.setdefault(target, []).append(shown)
        return [(m, n) for m, n in out.items()] if changed else None


def absolutize(path: Path, source: str, rewriter: Rewriter) -> str:
    """Relative imports -> absolute, resolved against the module's path before the move."""
    module = _module_of(path)
    if module is None or "from ." not in source:
        return source
    module = rewriter.reverse.get(module, module)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(source)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            absolute = ".".join(base + ([node.module] if node.module else []))
            edits.append((node, absolute))
    return _apply(source, [(n, [(m, [a.name if a.asname is None else f"{a.name} as {a.asname}" for a in n.names])])
                           for n, m in edits])


def _apply(source: str, edits: list[tuple[ast.ImportFrom, list[tuple[str, list[str]]]]]) -> str:
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    out = source
    for node, stmts in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        indent = " " * node.col_offset
        new = ("\n" + indent).join(f"from {m} import {', '.join(n)}" for m, n in stmts)
        out = out[:begin] + new + out[end:]
    return out


def rewrite_python(source: str, rewriter: Rewriter) -> str:
    tree = ast.parse(source)
    spans: list[tuple[int, int]] = []
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            spans.append((starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset))
    # Names outside `from X import` statements (those are the AST's): strings, attributes, `import a.b`.
    pieces, last = [], 0
    for begin, end in sorted(spans):
        pieces.append(rewriter.text(source[last:begin]))
        pieces.append(source[begin:end])
        last = end
    pieces.append(rewriter.text(source[last:]))
    text = "".join(pieces)
    # Re-parse: the text pass kept the ImportFrom statements as they were, but offsets elsewhere moved.
    tree = ast.parse(text)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            stmts = rewriter.import_from(node.module, node.names)
            if stmts is not None:
                edits.append((node, stmts))
    return _apply(text, edits)


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return [ROOT / p for p in out if p and (ROOT / p).is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated old prefixes to move (default: all)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    only = [p for p in args.only.split(",") if p]
    table = {o: n for o, n in TABLE.items() if not only or any(o.startswith(p) for p in only)}
    rewriter = Rewriter(table | {o: n for o, n in NAMES.items() if not only or any(o.startswith(p) for p in only)})

    files = [p for p in tracked() if p.resolve() != SELF]
    # 1. relative -> absolute in the packages that move
    for path in files:
        if path.suffix == ".py" and _module_of(path) and path.relative_to(ROOT).parts[1] in DIRS:
            source = path.read_text()
            new = absolutize(path, source, rewriter)
            if new != source and not args.dry_run:
                path.write_text(new)
    # 2. git mv
    for old, new in table.items():
        src, dst = _file(old), _file(new)
        package = new.rpartition(".")[0]
        init = _file(package).with_suffix("") / "__init__.py"
        if not args.dry_run:
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text(f'"""{PACKAGES[package]}"""\n')
                subprocess.run(["git", "add", str(init)], cwd=ROOT, check=True)
        if src.exists() and not dst.exists():
            print(f"git mv {src.relative_to(ROOT)} {dst.relative_to(ROOT)}")
            if not args.dry_run:
                subprocess.run(["git", "mv", str(src), str(dst)], cwd=ROOT, check=True)
    # 3. rewrite references
    changed = []
    for path in [p for p in tracked() if p.resolve() != SELF]:
        if path.suffix not in TEXT_SUFFIXES and path.name not in TEXT_NAMES:
            continue
        try:
            source = path.read_text()
        except UnicodeDecodeError:
            continue
        new = rewrite_python(source, rewriter) if path.suffix == ".py" else rewriter.text(source)
        if new != source:
            changed.append(path.relative_to(ROOT).as_posix())
            if not args.dry_run:
                path.write_text(new)
    print(f"{len(changed)} files rewritten", *changed, sep="\n  ", file=sys.stderr)


if __name__ == "__main__":
    main()
