"""The coordinator's live round table names who failed or stayed silent, and why."""

from __future__ import annotations

import io

from rich.console import Console

from fedfhe_coordinator.train.progress import RoundTable


def test_round_table_shows_each_refusal_with_its_reason():
    out = io.StringIO()
    table = RoundTable(2, console=Console(file=out, width=250))
    table.rows = [{"round": 1, "fit_nodes": 1, "missing": ["owner-2"], "seconds": 3.0, "clients": {}, "server": {},
                   "failures": [{"owner": "owner-1", "phase": "fit",
                                 "reason": "owner-1 refused the Flower App: Flower App 17fd is not approved here"}]}]
    table.console.print(table._table())
    text = out.getvalue()
    assert "1 (1 failed)" in text
    assert "owner-1: owner-1 refused the Flower App: Flower App 17fd is not approved here" in text
    assert "owner-2: no reply" in text
