"""Submit a federated run and follow it: progress per round, then the verified artifact."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedfhe_common import models
from fedfhe_common.artifact import TrainingArtifact
from fedfhe_common.errors import ConfigError, FedfheError
from fedfhe_common.schema import resolve_schema

from . import flwr_cli
from .config import CoordinatorConfig


def read_progress(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written right now
    return rows


ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a Python traceback: "RuntimeError: ...", "fedfhe_server.server_app.NodesLost: ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|NodesLost): \S")


def failure_reason(log_text: str) -> str:
    """What went wrong, in one line, from `flwr run --stream`'s output (empty if nothing says)."""
    lines = [ANSI.sub("", line).rstrip() for line in log_text.splitlines()]
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            name, _, message = line.partition(": ")
            return message if name.endswith("NodesLost") else line
    # flwr's own CLI errors come in a box: "╭─ Error ─...", "│ text │", "╰─...".
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("╭─ Error"):
            body = []
            for line in lines[i + 1:]:
                if not line.startswith("│"):
                    break
                body.append(line.strip("│ "))
            return " ".join(b for b in body if b)
    return ""


def preflight(cfg: CoordinatorConfig) -> None:
    """Refuse at once what the ServerApp would refuse only after every process is up: a family that
    does not fit the schema. A schema this process cannot resolve is left to the ServerApp to report."""
    try:
        schema = resolve_schema(cfg.training.schema)
    except ConfigError:
        return
    models.check_family(cfg.training.model, schema)


def run_training(
    cfg: CoordinatorConfig,
    overrides: dict[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
) -> TrainingArtifact:
    """Register the SuperNode keys, `flwr run` the app, report each round, load the artifact."""
    preflight(cfg)
    out = cfg.training.output_dir
    progress = out / "progress.jsonl"
    progress.unlink(missing_ok=True)
    stale = out / "artifact"
    started = time.time()
    flwr_cli.register_supernodes(cfg)
    run_config = flwr_cli.write_run_config(cfg, overrides or {})
    log_path = cfg.state_dir / "flwr-run.log"
    proc = flwr_cli.run_popen(cfg, run_config, log_path)
    seen = 0
    limit = timeout or (cfg.training.wait_for_nodes_s + cfg.training.round_timeout_s * 2 * cfg.training.rounds + 120)
    try:
        while True:
            rows = read_progress(progress)
            for row in rows[seen:]:
                if on_round:
                    on_round(row)
            seen = len(rows)
            if proc.poll() is not None:
                break
            if time.time() - started > limit:
                raise FedfheError(f"training did not finish within {limit:.0f}s; see {log_path}")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    for row in read_progress(progress)[seen:]:
        if on_round:
            on_round(row)
    artifact_dir = stale
    if not (artifact_dir / "manifest.json").exists() or (artifact_dir / "manifest.json").stat().st_mtime < started:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        tail = "\n".join(ANSI.sub("", line) for line in text.splitlines()[-15:])
        reason = failure_reason(text)
        head = f"training failed: {reason}\n" if reason else ""
        raise FedfheError(
            f"{head}the federated run produced no artifact (flwr run exit {proc.returncode}); "
            f"log {log_path}:\n{tail}"
        )
    from fedfhe_common.release import load_signing_key

    key = load_signing_key(cfg.release_key)
    TrainingArtifact.sign(artifact_dir, key)
    return TrainingArtifact.load(artifact_dir, key.public_key())
