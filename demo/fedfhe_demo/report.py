"""The run report: report.json (machine-readable), report.md, accuracy.png, and the closing table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def accuracy_plot(per_round: list[dict[str, Any]], centralized: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    rounds = [r["round"] for r in per_round]
    ax.plot(rounds, [r["accuracy"] for r in per_round], marker="o", label="federated (public test)")
    clients = [r.get("client_accuracy") for r in per_round]
    if all(c is not None for c in clients):
        ax.plot(rounds, clients, marker="s", linestyle=":", label="federated (owners' held-out rows)")
    if centralized is not None:
        ax.axhline(centralized, color="grey", linestyle="--", label="centralised reference")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_xticks(rounds)
    ax.set_title("fedfhe: accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def closing_table(report: dict[str, Any]) -> Table:
    acc, t, b, lat = report["accuracy"], report["timings_s"], report["bytes"], report["latency_ms_per_row"]
    table = Table(title=f"fedfhe demo: {report['dataset']}, {report['owners']} owners, {report['model']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("centralised accuracy (reference)", _pct(acc.get("centralized"))),
        (f"federated accuracy, clear ({report['rounds']} rounds)", _pct(acc.get("federated_clear"))),
        (f"FHE simulated accuracy (n_bits={report.get('n_bits')})", _pct(acc.get("fhe_simulated"))),
        ("FHE encrypted accuracy (through the service)", _pct(acc.get("fhe_encrypted"))),
        ("encrypted predictions equal simulated", str(report.get("encrypted_equals_simulated", "-"))),
        ("latency per row, end to end (ms)", f"{lat.get('encrypted_end_to_end', 0):.1f}"),
        ("latency per row, server FHE run (ms)", f"{lat.get('server_run', 0):.1f}"),
        ("evaluation keys uploaded (bytes, per owner)", f"{b.get('evaluation_keys', 0):,}"),
        ("ciphertext per row / result per row (bytes)",
         f"{b.get('ciphertext_per_row', 0):,} / {b.get('result_per_row', 0):,}"),
    ]
    rows += [(f"time: {phase} (s)", f"{secs:.1f}") for phase, secs in t.items()]
    for what, value in rows:
        table.add_row(what, value)
    return table


def markdown(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    lines = [
        f"# fedfhe run report: {report['dataset']}",
        "",
        f"{report['owners']} owners ({report.get('split', '')}), {report['model']}, {report['rounds']} rounds, "
        f"n_bits={report.get('n_bits')}. Work directory: `{report['work_dir']}`.",
        "",
        "| accuracy | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_pct(v)} |" for k, v in acc.items()]
    lines += ["", "| round | accuracy (public test) | loss | nodes |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['round']} | {_pct(r['accuracy'])} | {r['loss']:.4f} | {r['nodes']} |" for r in report["per_round"]]
    lines += ["", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["timings_s"].items()]
    lines += ["", "| latency per row | ms |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["latency_ms_per_row"].items()]
    lines += ["", "| bytes | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:,} |" for k, v in report["bytes"].items()]
    lines += ["", "![accuracy per round](accuracy.png)", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], work: Path) -> dict[str, Path]:
    paths = {"json": work / "report.json", "md": work / "report.md", "png": work / "accuracy.png"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True))
    paths["md"].write_text(markdown(report))
    accuracy_plot(report["per_round"], report["accuracy"].get("centralized"), paths["png"])
    return paths


def print_closing(report: dict[str, Any], paths: dict[str, Path], console: Console) -> None:
    console.print(closing_table(report))
    console.print(f"report: {paths['json']}  {paths['md']}  {paths['png']}")
