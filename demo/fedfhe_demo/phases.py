"""The demo's phases, each a real deployment step run as an operator would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.scoring import mean_abs_error, prediction_score
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.train.progress import RoundTable
from fedfhe_coordinator.train.training import run_training
from fedfhe_testbed.cluster import Cluster
from fedfhe_testbed.datasets import demo_schema
from fedfhe_testbed.partition_cli import write_partitions
from fedfhe_testbed.reference import Reference, centralised_reference, training_rows

from .fhe_phases import run_fhe_phases
from .report import print_closing, write_report
from .steps import Options, Steps

HOLDOUT = 0.2


def centralised_model(opts: Options, files: list[str], schema: Any) -> Reference:
    """The reference: the same family on the union of the rows the owners train on, regularisation chosen
    on a validation split of them (fedfhe_testbed.reference)."""
    parts = [load_table(path, schema) for path in files]
    X, y = training_rows(parts, HOLDOUT, opts.seed)
    ref = centralised_reference(opts.model, X, y, schema, seed=opts.seed)
    ref.info["rows_from"] = f"the owners' training rows (each owner's file minus its {HOLDOUT:.0%} held out)"
    return ref


def run_phases(opts: Options, work: Path, steps: Steps, console: Console) -> dict[str, Any]:
    owners = [f"owner-{i}" for i in range(opts.owners)]
    schema = demo_schema(opts.dataset)
    data = work / "data"
    report: dict[str, Any] = {
        "dataset": opts.dataset, "model": opts.model, "owners": opts.owners, "rounds": opts.rounds,
        "split": opts.split, "work_dir": str(work), "timings_s": steps.timings,
        "metric": "accuracy" if schema.is_classifier else "r2", "accuracy": {},
        "latency_ms_per_row": {}, "bytes": {},
    }
    # SecAgg+ by default (three owners or more), but not for a regressor: its values exceed SecAgg+'s clipping
    # range (fedfhe_coordinator.config, _resolve_secure_default), so its owners allow plain mode here.
    with Cluster(work) as cluster:
        with steps("pki"):
            cluster.make_pki(owners)
            console.print(f"CA, SuperLink and inference certificates, {len(owners)} owner certificates and "
                          f"SuperNode keys in {cluster.pki}")
        with steps("partition"):
            summary = write_partitions(opts.dataset, opts.owners, data, scheme=opts.split, alpha=opts.alpha,
                                       seed=opts.seed, max_rows=opts.max_rows)
            for o in summary["owners"]:
                console.print(f"{Path(o['path']).name}: {o['rows']} rows, labels {o['label_counts']}")
            files = [o["path"] for o in summary["owners"]]
            public_test, schema_ref = summary["public_test"]["path"], summary["schema"]
        with steps("training", cluster.logs / "superlink.log"):
            cfg_path = cluster.coordinator_config(
                owners, rounds=opts.rounds, model=opts.model, schema=schema_ref, min_nodes=opts.owners,
                public_test=public_test,
            )
            cluster.start_superlink(cfg_path)
            cluster.register(cfg_path)
            owner_cfgs = {}
            for i, owner in enumerate(owners):
                owner_cfgs[owner] = cluster.owner_config(owner, Path(files[i]), schema=schema_ref,
                                                         holdout_fraction=HOLDOUT, seed=opts.seed)
                cluster.start_supernode(owner, owner_cfgs[owner])
            steps.log = work / "coordinator" / "flwr-run.log"
            with RoundTable(opts.rounds, console) as table:
                artifact = run_training(coord.load(cfg_path), on_round=table.add)
            rows = artifact.metrics["per_round"]
            report["per_round"] = [
                {"round": r["round"], "accuracy": r["server"].get("accuracy", r["server"].get("r2")),
                 "loss": r["server"]["loss"], "nodes": r["fit_nodes"],
                 "client_accuracy": r.get("clients", {}).get("accuracy")}
                for r in rows
            ]
            report["accuracy"]["federated_clear"] = report["per_round"][-1]["accuracy"]
            X_test, y_test = load_table(public_test, schema)
            chosen = centralised_model(opts, files, schema)
            report["centralized_reference"] = chosen.info
            report["public_test_rows"] = int(len(y_test))
            reference = chosen.model.predict(X_test)
            report["accuracy"]["centralized"] = prediction_score(reference, y_test, schema)
            if not schema.is_classifier:  # MAE on the same public rows as R²
                trained = TrainingArtifact.load(work / "training" / "artifact")
                federated = trained.to_estimator().predict(trained.prep.transform(X_test))
                report["mae"] = {"centralized": mean_abs_error(reference, y_test),
                                 "federated_clear": mean_abs_error(federated, y_test)}
            # Training is over: free the cores for FHE.
            cluster.stop_many([p for p in cluster.procs if p.name.startswith(("supernode", "superlink"))])

        run_fhe_phases(opts, work, steps, console, cluster, owners, owner_cfgs, report, Path(public_test))
    paths = write_report(report, work)
    print_closing(report, paths, console)
    return report
