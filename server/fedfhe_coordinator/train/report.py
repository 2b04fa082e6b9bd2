"""The run report of a federated training: report.json, report.md and accuracy.png in the output folder.

``fedfhe-coordinator train`` writes it on every real deployment (Ansible's train.yml fetches
it); the demo's own report (demo/fedfhe_demo/report.py) draws its plot with
:func:`accuracy_plot` from here. The PNG needs matplotlib (``fedfhe-coordinator[report]``):
without it report.json and report.md are still written and say that the plot was skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedfhe_common.contracts.fl_contract import owner_text

LABEL = {"accuracy": "accuracy", "r2": "R²"}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401  # lazy: optional dependency, reported missing below
    except ImportError:
        return False
    return True


def accuracy_plot(per_round: list[dict[str, Any]], centralized: float | None, path: Path,
                  metric: str = "accuracy") -> Path:
    """Score per round: on the public test rows (``accuracy``) and on the owners' held-out rows
    (``client_accuracy``), each line drawn when every round has it, and a centralised reference."""
    import matplotlib  # lazy: optional dependency (fedfhe-coordinator[report])

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: optional dependency (fedfhe-coordinator[report])

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    rounds = [r["round"] for r in per_round]
    public = [r.get("accuracy") for r in per_round]
    if rounds and all(v is not None for v in public):
        ax.plot(rounds, public, marker="o", label="federated (public test)")
    clients = [r.get("client_accuracy") for r in per_round]
    if rounds and all(c is not None for c in clients):
        ax.plot(rounds, clients, marker="s", linestyle=":", label="federated (owners' held-out rows)")
    if centralized is not None:
        ax.axhline(centralized, color="grey", linestyle="--", label="centralised reference")
    ax.set_xlabel("round")
    label = LABEL.get(metric, metric)
    ax.set_ylabel(label)
    ax.set_xticks(rounds)
    ax.set_title(f"fedfhe: {label} per round")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _score(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if metric == "accuracy" else f"{v:.4f}"


def _failures(row: dict[str, Any]) -> list[dict[str, str]]:
    out = [{"owner": owner_text(f.get("owner", "?")), "reason": owner_text(f.get("reason", ""))}
           for f in row.get("failures") or [] if isinstance(f, dict)]
    out += [{"owner": owner_text(o), "reason": "no reply"} for o in row.get("missing") or []]
    return out + ([{"owner": "(coordinator)", "reason": owner_text(row["stopped"])}] if row.get("stopped") else [])


def training_report(artifact: Any, *, run_id: int | None, status: str, owners: list[str],
                    seconds: float) -> dict[str, Any]:
    """What one `train` produced, as plain data: the run, the model, and every round with who failed and why."""
    metric = "accuracy" if artifact.schema.is_classifier else "r2"
    per_round = []
    for r in artifact.metrics.get("per_round", []):
        server, clients = r.get("server") or {}, r.get("clients") or {}
        per_round.append({
            "round": r.get("round"), "accuracy": server.get(metric), "loss": server.get("loss", clients.get("loss")),
            "client_accuracy": clients.get(metric), "nodes": r.get("fit_nodes"), "owners": r.get("fit_owners", []),
            "seconds": r.get("seconds"), "failures": _failures(r),
        })
    final = per_round[-1] if per_round else {}
    return {
        "kind": "fedfhe-training-report", "run_id": None if run_id is None else str(run_id), "status": status,
        "model": artifact.family,
        "schema": artifact.schema.name, "metric": metric, "rounds": artifact.metrics.get("rounds"),
        "owners": owners, "timings_s": {"training": round(seconds, 1)},
        # secure aggregation on or off, with its threshold and DP noise (the ServerApp's privacy_summary)
        "privacy": artifact.metrics.get("privacy") or {"secure_aggregation": False},
        # the aggregation the run used (training.aggregation auto resolves per run) and why
        "aggregation": artifact.metrics.get("aggregation") or {},
        "accuracy": {"federated_clear": final.get("accuracy"), "federated_clients": final.get("client_accuracy")},
        "per_round": per_round,
    }


def _privacy_line(privacy: dict[str, Any]) -> str:
    if not privacy.get("secure_aggregation"):
        return "Secure aggregation: off (the coordinator saw each owner's update)."
    line = (f"Secure aggregation: on (SecAgg+; the coordinator saw only the sum; reconstruction threshold "
            f"{privacy.get('reconstruction_threshold', '-')} of {privacy.get('owners', '-')} owners)")
    dp = privacy.get("dp")
    if dp:
        line += (f"; differential privacy: noise multiplier {dp['noise_multiplier']}, "
                 f"standard deviation {dp['noise_stddev_per_round']:.3g} per round")
    return line + "."


def _aggregation_line(aggregation: dict[str, Any]) -> str:
    used = aggregation.get("used", "-")
    line = f"Aggregation: {used} ({aggregation.get('why', 'not recorded')})."
    if used == "newton":
        line += (" Each round the owners sent their mean loss, gradient and Hessian over their training rows; "
                 "without secure aggregation the coordinator saw each owner's.")
    return line


def _secure_scores_note(report: dict[str, Any]) -> str:
    """Why a secure run's report has no owners' score for its final model."""
    if not (report.get("privacy") or {}).get("secure_aggregation") or report["accuracy"]["federated_clients"]:
        return ""
    return (" Under secure aggregation each owner's held-out scores reach the coordinator only as a sum inside "
            "the next round's SecAgg+ vector, and owners refuse a clear evaluation, so the final model has none; "
            "the table gives every earlier round's.")


def markdown(report: dict[str, Any], plot: bool) -> str:
    m = report["metric"]
    label = LABEL.get(m, m)
    acc = report["accuracy"]
    lines = [
        f"# fedfhe training report: Flower run {report['run_id']}",
        "",
        f"{report['model']} on schema {report['schema']}, {report['rounds']} rounds, "
        f"{len(report['owners'])} registered owners ({', '.join(report['owners'])}); Flower status "
        f"{report['status']}; training took {report['timings_s']['training']:.0f} s.",
        "",
        _privacy_line(report.get("privacy") or {}),
        "",
        _aggregation_line(report.get("aggregation") or {}),
        "",
        f"Final {label}: {_score(m, acc['federated_clear'])} on the public test rows, "
        f"{_score(m, acc['federated_clients'])} on the owners' held-out rows." + _secure_scores_note(report),
        "",
        f"| round | {label} (public test) | {label} (owners) | loss | owners | seconds | failed or missing (reason) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["per_round"]:
        problems = "; ".join(f"{f['owner']}: {f['reason']}" for f in r["failures"]).replace("|", "\\|") or "-"
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['round']} | {_score(m, r['accuracy'])} | {_score(m, r['client_accuracy'])} | {loss} | "
                     f"{r['nodes']} | {secs} | {problems} |")
    lines += ["", f"![{label} per round](accuracy.png)" if plot else
              "accuracy.png was not drawn: matplotlib is not installed (pip install 'fedfhe-coordinator[report]').", ""]
    return "\n".join(lines)


def write_training_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and (with matplotlib) accuracy.png in ``out_dir``; the paths written."""
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    plot = matplotlib_available() and bool(report["per_round"])
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    paths["md"].write_text(markdown(report, plot))
    if plot:
        paths["png"] = accuracy_plot(report["per_round"], None, out_dir / "accuracy.png", report["metric"])
    else:
        (out_dir / "accuracy.png").unlink(missing_ok=True)  # never leave an earlier run's plot beside this report
    return paths
