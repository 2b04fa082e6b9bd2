"""The coordinator's record of its federated runs: Flower's run id and status, and what fedfhe made of each.

Flower's SuperLink keeps every run and its status (``flwr ls --format json``); fedfhe
adds, in ``state_dir/runs.jsonl`` (one JSON object per line, appended), what the
SuperLink does not know: the model, the rounds asked for, where the artifact and
the report went, and how ``train`` ended. ``fedfhe-coordinator runs`` joins the two.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

RUNS_FILE = "runs.jsonl"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def record(state_dir: Path, run_id: int, **fields: Any) -> None:
    """Append what fedfhe knows about ``run_id`` now (later lines add to earlier ones)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / RUNS_FILE, "a", encoding="utf-8") as f:
        # Flower's run ids are 64-bit: kept as strings, as `flwr ls --format json` does (JSON tools lose digits)
        f.write(json.dumps({"run_id": str(run_id), "at": now_iso(), **fields}, default=str) + "\n")


def records(state_dir: Path) -> dict[int, dict[str, Any]]:
    """run id -> the merged record; lines that do not parse (a torn last write) are skipped."""
    path = state_dir / RUNS_FILE
    out: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            run_id = int(row["run_id"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        out.setdefault(run_id, {}).update(row)
    return out


def joined(flower_runs: list[dict[str, Any]], ours: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Flower's runs (newest first) with fedfhe's record of each; ``fedfhe`` is None for runs fedfhe did not start."""
    rows = []
    for run in flower_runs:
        try:
            run_id = int(run.get("run-id", ""))
        except ValueError:
            continue
        mine = ours.get(run_id)
        rows.append({
            "run_id": str(run_id), "status": run.get("status", ""), "status_details": run.get("status-details", ""),
            "app": f"{run.get('fab-id', '')}=={run.get('fab-version', '')}", "elapsed_s": run.get("elapsed"),
            "pending_at": run.get("pending-at"), "finished_at": run.get("finished-at"),
            "fedfhe": {k: v for k, v in mine.items() if k not in ("run_id", "at")} if mine else None,
        })
    return sorted(rows, key=lambda r: str(r["pending_at"] or ""), reverse=True)


def render(rows: list[dict[str, Any]]) -> Any:
    """A rich table of :func:`joined` rows."""
    from rich.table import Table  # lazy: rich only for the commands that draw tables

    t = Table(title="federated runs (newest first)")
    for col in ("run id", "status", "started", "elapsed (s)", "model", "rounds", "result"):
        t.add_column(col, overflow="fold")
    for r in rows:
        f = r["fedfhe"] or {}
        interrupted = "interrupted (Ctrl-C)" if f.get("event") == "interrupted" else ""
        details = r["status_details"] if r["status_details"] != "N/A" else ""
        result = f.get("error") or f.get("artifact") or interrupted or details or ("-" if f else "not by fedfhe")
        elapsed = r["elapsed_s"]
        t.add_row(str(r["run_id"]), r["status"], str(r["pending_at"] or "-"),
                  f"{elapsed:.0f}" if isinstance(elapsed, (int, float)) else "-",
                  str(f.get("model", "-")), str(f.get("rounds", "-")), str(result))
    return t
