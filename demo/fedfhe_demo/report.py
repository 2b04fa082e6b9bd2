"""The run report: report.json (machine-readable), report.md, accuracy.png, and the closing table.

Classifiers report accuracy; regressors R² (``report["metric"] == "r2"``, kept under the same
``accuracy`` key) and mean absolute error (``report["mae"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def accuracy_plot(per_round: list[dict[str, Any]], centralized: float | None, path: Path,
                  metric: str = "accuracy") -> Path:
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
    label = _LABEL.get(metric, metric)
    ax.set_ylabel(label)
    ax.set_xticks(rounds)
    ax.set_title(f"fedfhe: {label} per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_LABEL = {"accuracy": "accuracy", "r2": "R²"}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _score(report: dict[str, Any], v: float | None) -> str:
    """Accuracy as a percentage, R² as a number."""
    if report.get("metric", "accuracy") == "accuracy":
        return _pct(v)
    return "-" if v is None else f"{v:.4f}"


def _equal_row(report: dict[str, Any]) -> tuple[str, str]:
    if "quantization_step" in report:
        return (f"encrypted within one output quantisation step ({report['quantization_step']:.3g}) of simulated",
                f"{report.get('encrypted_equals_simulated')} (max gap {report['encrypted_vs_simulated_max_abs']:.3g})")
    return "encrypted predictions equal simulated", str(report.get("encrypted_equals_simulated", "-"))


def closing_table(report: dict[str, Any]) -> Table:
    acc, t, b, lat = report["accuracy"], report["timings_s"], report["bytes"], report["latency_ms_per_row"]
    table = Table(title=f"fedfhe demo: {report['dataset']}, {report['owners']} owners, {report['model']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    m = _LABEL.get(report.get("metric", "accuracy"), "accuracy")
    mae = report.get("mae", {})
    rows = [
        (f"centralised {m} (reference)", _score(report, acc.get("centralized"))),
        (f"federated {m}, clear ({report['rounds']} rounds)", _score(report, acc.get("federated_clear"))),
        (f"FHE simulated {m} (n_bits={report.get('n_bits')})", _score(report, acc.get("fhe_simulated"))),
        (f"FHE encrypted {m} (through the service)", _score(report, acc.get("fhe_encrypted"))),
    ]
    rows += [(f"mean absolute error: {k}", f"{v:.3f}") for k, v in mae.items()]
    rows += [
        _equal_row(report),
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
    m = _LABEL.get(report.get("metric", "accuracy"), "accuracy")
    lines = [
        f"# fedfhe run report: {report['dataset']}",
        "",
        f"{report['owners']} owners ({report.get('split', '')}), {report['model']}, {report['rounds']} rounds, "
        f"n_bits={report.get('n_bits')}. Work directory: `{report['work_dir']}`.",
        "",
        f"| {m} | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_score(report, v)} |" for k, v in acc.items()]
    if report.get("mae"):
        lines += ["", "| mean absolute error | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in report["mae"].items()]
    what, value = _equal_row(report)
    lines += ["", f"{what}: {value}."]
    lines += ["", f"| round | {m} (public test) | loss | nodes |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['round']} | {_score(report, r['accuracy'])} | {r['loss']:.4f} | {r['nodes']} |"
              for r in report["per_round"]]
    lines += ["", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["timings_s"].items()]
    lines += ["", "| latency per row | ms |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["latency_ms_per_row"].items()]
    lines += ["", "| bytes | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:,} |" for k, v in report["bytes"].items()]
    lines += ["", f"![{m} per round](accuracy.png)", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], work: Path) -> dict[str, Path]:
    paths = {"json": work / "report.json", "md": work / "report.md", "png": work / "accuracy.png"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True))
    paths["md"].write_text(markdown(report))
    accuracy_plot(report["per_round"], report["accuracy"].get("centralized"), paths["png"],
                  report.get("metric", "accuracy"))
    return paths


def print_closing(report: dict[str, Any], paths: dict[str, Path], console: Console) -> None:
    console.print(closing_table(report))
    console.print(f"report: {paths['json']}  {paths['md']}  {paths['png']}")
