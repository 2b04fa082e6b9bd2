"""A rich live table of federated rounds: what an operator watches during training."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fedfhe_common.contracts.fl_contract import owner_text


def _problems(row: dict[str, Any]) -> str:
    """Who failed and why (a refused Flower App, a refused reply, ...), and who stayed silent."""
    parts = [f"{owner_text(f.get('owner', '?'))}: {owner_text(f.get('reason', ''), 160)}"
             for f in row.get("failures") or [] if isinstance(f, dict)]
    # progress.jsonl lists each silent owner as {"owner", "phase", "reason", ...} (older rows: a bare name).
    parts += [f"{owner_text(m.get('owner', '?'))}: {owner_text(m.get('reason', 'no reply'), 160)}"
              if isinstance(m, dict)
              else f"{m}: no reply" for m in row.get("missing") or []]
    if row.get("stopped"):  # the run's last round: the next would have resent a model (rounds.TrainingStopped)
        parts.append(owner_text(row["stopped"]))
    return "; ".join(parts) or "-"


COLUMNS = ("round", "clients", "loss", "accuracy (clients)", "accuracy (public test)", "seconds",
           "failed or missing owners (reason)")


def _failed_owners(row: dict[str, Any]) -> int:
    """Owners that failed the round: one owner failing both fit and evaluate counts once."""
    return len({str(f.get("owner", "?")) if isinstance(f, dict) else str(f) for f in row.get("failures") or []})


class RoundTable:
    """The rounds of a run as they end: a live table on a terminal; on a pipe or log (Ansible, journald),
    one line per round as it ends, then the whole table. Goes to stdout unless given another console."""

    LOG_WIDTH = 160  # a pipe's console defaults to 80 columns, which folds every failure reason

    def __init__(self, rounds: int, console: Console | None = None) -> None:
        self.rounds = rounds
        self.rows: list[dict[str, Any]] = []
        self.console = console or Console()
        # on a pipe, print wider than its 80 columns, without changing a console the caller shares
        self.width = None if self.console.is_terminal else max(self.console.width, self.LOG_WIDTH)
        self.live = (Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
                     if self.console.is_terminal else None)

    def _cells(self, r: dict[str, Any]) -> list[str]:
        clients, server = r.get("clients", {}), r.get("server", {})
        acc = clients.get("accuracy", clients.get("r2"))
        sacc = server.get("accuracy", server.get("r2"))
        return [
            str(r["round"]),
            f"{r.get('fit_nodes', 0)}" + (f" ({_failed_owners(r)} failed)" if r.get("failures") else ""),
            f"{clients['loss']:.4f}" if "loss" in clients else "-",
            f"{acc:.4f}" if acc is not None else "-",
            f"{sacc:.4f}" if sacc is not None else "-",
            f"{r.get('seconds', 0):.1f}",
            _problems(r),
        ]

    def _table(self) -> Table:
        t = Table(title=f"federated training ({len(self.rows)}/{self.rounds} rounds)")
        for col in COLUMNS[:-1]:
            t.add_column(col, justify="right")
        t.add_column(COLUMNS[-1], justify="left", overflow="fold")
        for r in self.rows:
            t.add_row(*(Text(c) for c in self._cells(r)))  # reasons are owners' text: no markup
        return t

    def line(self, row: dict[str, Any]) -> str:
        """One round as one line (logs): ``round 1/3: clients 2, loss 0.4, ..., failed or missing owners: ...``."""
        rnd, clients, loss, acc, public, seconds, problems = self._cells(row)
        return (f"round {rnd}/{self.rounds}: clients {clients}, loss {loss}, accuracy (clients) {acc}, "
                f"accuracy (public test) {public}, {seconds} s; failed or missing owners: {problems}")

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.live is not None:
            self.live.update(self._table())
        else:
            self.console.print(self.line(row), markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> RoundTable:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)  # type: ignore[arg-type]
        elif self.rows:
            saved = self.console.width
            self.console.width = self.width or saved  # rich caps print(width=) at the console's width
            try:
                self.console.print(self._table())
            finally:
                self.console.width = saved
