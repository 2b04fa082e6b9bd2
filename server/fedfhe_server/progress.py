"""A rich live table of federated rounds: what an operator watches during training."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _problems(row: dict[str, Any]) -> str:
    """Who failed and why (a refused Flower App, a refused reply, ...), and who stayed silent."""
    parts = [f"{f.get('owner', '?')}: {str(f.get('reason', ''))[:160]}" for f in row.get("failures") or []
             if isinstance(f, dict)]
    parts += [f"{owner}: no reply" for owner in row.get("missing") or []]
    return "; ".join(parts) or "-"


class RoundTable:
    def __init__(self, rounds: int, console: Console | None = None) -> None:
        self.rounds = rounds
        self.rows: list[dict[str, Any]] = []
        self.console = console or Console(stderr=True)
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def _table(self) -> Table:
        t = Table(title=f"federated training ({len(self.rows)}/{self.rounds} rounds)")
        for col in ("round", "clients", "loss", "accuracy (clients)", "accuracy (public test)", "seconds"):
            t.add_column(col, justify="right")
        t.add_column("failed or missing owners (reason)", justify="left", overflow="fold")
        for r in self.rows:
            clients, server = r.get("clients", {}), r.get("server", {})
            acc = clients.get("accuracy", clients.get("r2"))
            sacc = server.get("accuracy", server.get("r2"))
            t.add_row(
                str(r["round"]),
                f"{r.get('fit_nodes', 0)}" + (f" ({len(r['failures'])} failed)" if r.get("failures") else ""),
                f"{clients['loss']:.4f}" if "loss" in clients else "-",
                f"{acc:.4f}" if acc is not None else "-",
                f"{sacc:.4f}" if sacc is not None else "-",
                f"{r.get('seconds', 0):.1f}",
                _problems(r),
            )
        return t

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.live.update(self._table())

    def __enter__(self) -> RoundTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)  # type: ignore[arg-type]
