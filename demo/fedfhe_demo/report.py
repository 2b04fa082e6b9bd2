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

# One plot for the demo and for `fedfhe-coordinator train`'s report on real deployments.
from fedfhe_coordinator.train.report import LABEL as _LABEL
from fedfhe_coordinator.train.report import accuracy_plot


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


def score_rows(report: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """(what, which rows, score): each score next to the rows it was measured on.

    The public test rows are the coordinator's; the owners' held-out rows are what
    they encrypt. Clear and FHE are compared on the held-out rows only, so no line
    sets a clear score on one set of rows beside an FHE score on another.
    """
    acc = report["accuracy"]
    public = f"public test rows ({report['public_test_rows']})" if "public_test_rows" in report else "public test rows"
    held = f"owners' held-out rows ({report['heldout_rows']})" if "heldout_rows" in report else "owners' held-out rows"
    rows = [
        ("centralised reference", public, acc.get("centralized")),
        (f"federated, clear ({report['rounds']} rounds)", public, acc.get("federated_clear")),
        ("federated, clear", held, acc.get("federated_clear_heldout")),
        (f"FHE, quantised in the clear (n_bits={report.get('n_bits')})", held, acc.get("fhe_quantized_clear")),
        (f"FHE simulated (n_bits={report.get('n_bits')})", held, acc.get("fhe_simulated")),
        ("FHE encrypted (through the service)", held, acc.get("fhe_encrypted")),
    ]
    return [r for r in rows if r[2] is not None]


def closing_table(report: dict[str, Any]) -> Table:
    t, b, lat = report["timings_s"], report["bytes"], report["latency_ms_per_row"]
    table = Table(title=f"fedfhe demo: {report['dataset']}, {report['owners']} owners, {report['model']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    m = _LABEL.get(report.get("metric", "accuracy"), "accuracy")
    mae = report.get("mae", {})
    where_before = None
    for what, where, v in score_rows(report):  # grouped under the rows they were measured on
        if where != where_before:
            table.add_row(f"{m} on the {where}", "", style="bold")
            where_before = where
        table.add_row(f"  {what}", _score(report, v))
    table.add_section()
    rows = [(f"mean absolute error: {k}", f"{v:.3f}") for k, v in mae.items()]
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
    m = _LABEL.get(report.get("metric", "accuracy"), "accuracy")
    lines = [
        f"# fedfhe run report: {report['dataset']}",
        "",
        f"{report['owners']} owners ({report.get('split', '')}), {report['model']}, {report['rounds']} rounds, "
        f"n_bits={report.get('n_bits')}. Work directory: `{report['work_dir']}`.",
        "",
        f"| model | rows | {m} |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {what} | {where} | {_score(report, v)} |" for what, where, v in score_rows(report)]
    if report.get("centralized_reference", {}).get("chosen"):
        ref = report["centralized_reference"]
        (param, value), = ref["chosen"].items()
        lines += ["", f"Centralised reference: {ref['family']} on the owners' pooled training rows, "
                  f"{param}={value} chosen from {ref['grid'][param]} on {ref['validation']}."]
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
