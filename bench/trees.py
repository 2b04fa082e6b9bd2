"""Federated XGBoost against centralised XGBoost, encrypted inference of the federated booster, and key reuse.

Breast cancer (binary) and wine (3 classes), scikit-learn's bundled tables, each split
75/25 (stratified, seed 0); every column min-max scaled into the declared schema bounds
[0, 1] by the training split's range (test rows clipped). The training split goes to 3 or
10 owners, IID or Dirichlet(0.5) over the labels (``fedfhe_testbed.partition``, seed 0), and
is boosted in this process through fedfhe's checked FedXgbBagging / FedXgbCyclic
(Flower's configure_train / aggregate_train, ``tree_strategy.strategy``), each owner's
step being its ClientApp's ``tree_training.train_reply``. Depth 3, eta 0.3, at most 30
trees (``TreeBudget.check_run``): rounds = 30 // (trees one round adds), so bagging with
10 owners runs 3 rounds (breast cancer) or 1 (wine), and the centralised XGBoost
(``xgboost.train`` on the pooled training split) gets the same parameters and the
federated model's tree count. Both are scored on the same test split.

- ``federated_over_centralized``: dataset -> the worst federated / centralised accuracy over
  its 8 runs (3 and 10 owners x IID and Dirichlet x bagging and cyclic); bagging combines the owners'
  trees by their row-weighted average (``combine`` auto for a classifier), and each bagging run also
  gives ``federated_accuracy_if_summed``, the same run with Flower's own sum of the owners' trees;
  ``federated_over_centralized_by_scheme`` splits it by IID / Dirichlet (goals: 0.98, 0.95);
  ``runs``: every configuration's figures.
- ``models``: one federated booster per dataset (bagging, IID, 3 owners) made into a signed
  training artifact (``federated_trees.to_artifact``), compiled (``compile_artifact``, the
  tree default n_bits within the budget's max_n_bits 6) and run through Concrete ML's
  FHEModelClient / FHEModelServer here: at most 3 encrypted rows (60 s budget after the first).
- ``encrypted_equals_simulated``: true only if every decrypted class (``owner_prediction``,
  what the owner's client decodes) equals Concrete's simulated one, over every model.
- ``latency_ms_per_row``: model -> median encrypt + server run + decrypt, in one process.
- ``key_bytes``: model -> the serialised evaluation keys an owner uploads.
- ``retrain_upload_bytes``: the most an owner uploads when a model is retrained with unchanged
  parameters (same depth, eta and n_bits: the same rows again, other owners' rows, another
  round count) and compiled again: 0 when the new bundle's ``key_params_sha256`` equals the
  one the owner holds keys for (``fedfhe_owner.predict.key_reuse``), else the new key bytes;
  ``retrain_upload_bytes_by_dataset`` per model. ``retrains`` lists each case, with changed
  parameters (n_bits 4, depth 2) beside them, where the two keysets differ
  (``key_params.differences``), and whether a row encrypted under the reused keys decrypts to
  the new model's simulated class.

    .venv/bin/python bench/trees.py [--out bench/results/trees.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from fedfhe_common.contracts import booster_json, key_params
from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import fedxgb
from fedfhe_common.pki.release import load_signing_key, make_release_key
from fedfhe_common.runtime.exit_status import exit_with
from fedfhe_coordinator.fhe.compile import compile_artifact
from fedfhe_coordinator.serverapp import federated_trees, tree_strategy
from fedfhe_owner.clientapp import tree_training
from fedfhe_testbed.partition import dirichlet_indices, partition

sys.path.insert(0, str(Path(__file__).parent))
from families import time_encrypted_rows  # noqa: E402

FAMILY = "XGBClassifier"
LOADERS = {"breast-cancer": load_breast_cancer, "wine": load_wine}
OWNERS = (3, 10)
SCHEMES = ("iid", "dirichlet")
ALPHA, SEED, TEST_FRACTION = 0.5, 0, 0.25
PARAMS = fedxgb.BoostParams(max_depth=3, eta=0.3)
BUDGET = fedxgb.TreeBudget(max_trees=30, max_depth=3, max_n_bits=6)
GOALS = {"iid": 0.98, "dirichlet": 0.95}
FHE_CONFIG = ("bagging", "iid", 3)  # the federated model compiled and run encrypted, per dataset
ROWS = 3
SHARED_MACHINE = "2 cores shared with other jobs: latency in milliseconds varies with their load"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DatasetSchema]:
    """The stratified 75/25 split, columns scaled into the schema's [0, 1] by the training split's range."""
    X, y = LOADERS[name](return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y)
    lo, span = X_tr.min(axis=0), np.ptp(X_tr, axis=0)
    span = np.where(span > 0, span, 1.0)
    scale = lambda A: np.clip((A - lo) / span, 0.0, 1.0)  # noqa: E731
    schema = DatasetSchema(name=name, n_features=X.shape[1], feature_min=0.0, feature_max=1.0,
                           classes=sorted(int(c) for c in np.unique(y)))
    return scale(X_tr), y_tr, scale(X_te), y_te, schema


def owners_rows(y: np.ndarray, owners: int, scheme: str, seed: int = SEED) -> tuple[list[np.ndarray], int | None]:
    """Row indices per owner; Dirichlet falls back to 5 rows per owner at least when 10 cannot be drawn
    (wine's 133 training rows over 10 owners): the second value says so."""
    try:
        return partition(y, owners, scheme, ALPHA, seed), None
    except ValueError:
        return dirichlet_indices(y, owners, ALPHA, seed, min_rows=5), 5


class Grid:
    """What Flower's sampling reads: the connected nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def get_nodes(self) -> list[object]:
        return []


def federate(mode: fedxgb.Mode, parts: list[tuple[np.ndarray, np.ndarray]], schema: DatasetSchema,
             params: fedxgb.BoostParams, rounds: int, max_trees: int, combine: str = "auto"
             ) -> tree_strategy.BoosterScreen:
    """``rounds`` server rounds of the checked strategy with one in-process owner per part (tests/support's
    fedxgb_harness, for N owners): each owner runs tree_training.train_reply on what it was sent."""
    random.seed(SEED)  # Flower samples nodes with random.sample: FedXgbCyclic's owner order
    nodes = [101 + i for i in range(len(parts))]
    rows = dict(zip(nodes, parts, strict=True))
    extra: dict[str, Any] = {"min_train_nodes": len(nodes),
                             "combine": fedxgb.resolve_combine(combine, schema)} if mode == "bagging" else {}
    strategy = tree_strategy.strategy(mode, schema, params, max_trees, min_available_nodes=len(nodes), **extra)
    grid, arrays = Grid(nodes), tree_strategy.booster_record(None)
    for server_round in range(1, rounds + 1):
        config = ConfigRecord(fedxgb.instruction(mode, params, max_trees))
        replies = []
        for m in strategy.configure_train(server_round, arrays, config, grid):  # type: ignore[attr-defined]
            m.metadata.__dict__["_message_id"] = m.object_id  # what the grid's push sets
            X, y = rows[int(m.metadata.dst_node_id)]
            raw, metrics = tree_training.train_reply(m.content[fc.CONFIG], m.content[fc.ARRAYS],
                                                     (X, X[:0], y, y[:0]), schema)
            replies.append(Message(RecordDict({fc.ARRAYS: ArrayRecord([np.frombuffer(raw, dtype=np.uint8)]),
                                               fc.METRICS: MetricRecord(metrics)}), reply_to=m))
        new, _ = strategy.aggregate_train(server_round, replies)  # type: ignore[attr-defined]
        arrays = new if new is not None else arrays
    return strategy


def centralised(X: np.ndarray, y: np.ndarray, schema: DatasetSchema, params: fedxgb.BoostParams, trees: int
                ) -> booster_json.Booster:
    limits = fedxgb.global_limits(schema, params, trees)
    bst = xgb.train(params.xgb_params(limits), xgb.DMatrix(X, label=y), trees // limits.per_round)
    return booster_json.parse(bytes(bst.save_raw("json")), limits)


def accuracy(booster: booster_json.Booster, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> float:
    return float(accuracy_score(y, tree_training.predict(booster, X, schema)))


def plan(schema: DatasetSchema, mode: fedxgb.Mode, owners: int, params: fedxgb.BoostParams = PARAMS,
         max_trees: int = BUDGET.max_trees) -> tuple[int, int]:
    """(rounds, trees): as many rounds as the tree budget holds, checked as the ServerApp checks a run."""
    per_round = BUDGET.planned_trees(schema, params, mode, 1, owners)
    rounds = max(1, max_trees // per_round)
    return rounds, BUDGET.check_run(schema, params, mode, rounds, owners)


def one_run(data: tuple[Any, ...], mode: fedxgb.Mode, scheme: str, owners: int, *, seed: int = SEED,
            params: fedxgb.BoostParams = PARAMS, max_trees: int = BUDGET.max_trees
            ) -> tuple[dict[str, Any], booster_json.Booster]:
    X_tr, y_tr, X_te, y_te, schema = data
    rounds, trees = plan(schema, mode, owners, params, max_trees)
    idx, min_rows = owners_rows(y_tr, owners, scheme, seed)
    started = time.perf_counter()
    strategy = federate(mode, [(X_tr[i], y_tr[i]) for i in idx], schema, params, rounds, trees)
    seconds = time.perf_counter() - started
    model = strategy.global_model
    assert model is not None, f"{schema.name} {mode} {scheme} {owners}: no global model"
    fed = accuracy(model, X_te, y_te, schema)
    central = accuracy(centralised(X_tr, y_tr, schema, params, model.n_trees), X_te, y_te, schema)
    if mode == "bagging":  # the same run with Flower's own sum of the owners' trees, for comparison
        summed = federate(mode, [(X_tr[i], y_tr[i]) for i in idx], schema, params, rounds, trees, "sum")
        assert summed.global_model is not None
        sum_accuracy: float | None = accuracy(summed.global_model, X_te, y_te, schema)
    else:
        sum_accuracy = None
    run = {"dataset": schema.name, "mode": mode, "scheme": scheme, "owners": owners, "rounds": rounds,
           "combine": fedxgb.resolve_combine("auto", schema) if mode == "bagging" else None,
           "federated_accuracy_if_summed": sum_accuracy,
           "trees": model.n_trees, "planned_trees": trees, "owner_rows": [len(i) for i in idx],
           "federated_accuracy": fed, "centralised_accuracy": central, "ratio": fed / central,
           "refusals": [r.reason for r in strategy.refusals], "seconds": seconds}
    if min_rows is not None:
        run["dirichlet_min_rows"] = min_rows
    return run, model


def compile_model(model: booster_json.Booster, data: tuple[Any, ...], run: dict[str, Any], work: Path, key: Any,
                  version: str, params: fedxgb.BoostParams = PARAMS, n_bits: int | None = None) -> tuple[Any, Any]:
    """The federated booster as a signed artifact, read back and compiled as the coordinator does."""
    X_te, y_te, schema = data[2], data[3], data[4]
    artifact = federated_trees.to_artifact(
        model.to_bytes(), FAMILY, schema, params, run["planned_trees"], mode=run["mode"], rounds=run["rounds"],
        metrics={"owners": run["owners"], "xgboost_budget": {"max_trees": BUDGET.max_trees,
                                                             "max_depth": BUDGET.max_depth,
                                                             "max_n_bits": BUDGET.max_n_bits}})
    artifact.save(work / f"artifact-{version}", key)
    artifact = TrainingArtifact.load(work / f"artifact-{version}", key.public_key())
    return compile_artifact(artifact, work / f"bundle-{version}", signing_key=key, eval_set=(X_te, y_te),
                            n_bits=n_bits, model_id=f"{schema.name}-fedxgb", version=version)


def keys_of(bundle: Path, keyset: Path) -> tuple[Any, bytes, float]:
    """A client of ``bundle`` holding the keyset stored at ``keyset`` (as fedfhe_owner.predict.keys does: no Concrete
    key cache), generated and stored there first when there is none; (client, evaluation keys, keygen s)."""
    from concrete import fhe
    from concrete.ml.deployment import FHEModelClient

    client = FHEModelClient(str(bundle))
    started = time.perf_counter()
    if keyset.is_file():
        client.client.keys = fhe.Keys.deserialize(keyset)
    else:
        client.generate_private_and_evaluation_keys()
        keyset.write_bytes(client.client.keys.serialize())
    seconds = time.perf_counter() - started
    return client, client.get_serialized_evaluation_keys(), seconds


def encrypted_rows(client: Any, evaluation_keys: bytes, bundle: Path, fhe_model: Any, X: np.ndarray,
                   schema: DatasetSchema, rows: int) -> dict[str, Any]:
    """Up to ``rows`` rows encrypted, run by FHEModelServer, decrypted and decoded as the owner's client does."""
    from concrete.ml.deployment import FHEModelServer

    server = FHEModelServer(str(bundle))
    server.load()
    found, latencies, server_runs = time_encrypted_rows(client, server, evaluation_keys, X[:rows], schema)
    predictions = [int(p) for p in found]
    n = len(predictions)
    simulated = np.asarray(fhe_model.predict(X[:n], fhe="simulate")).reshape(n, -1)[:, 0].astype(int).tolist()
    return {"encrypted_rows": n, "encrypted": predictions, "simulated": simulated,
            "encrypted_equals_simulated": predictions == simulated,
            "latency_ms_per_row": 1000 * statistics.median(latencies),
            "server_run_ms_per_row": 1000 * statistics.median(server_runs)}


def fhe_section(data: tuple[Any, ...], run: dict[str, Any], model: booster_json.Booster, work: Path, key: Any
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The model's encrypted rows, then its retrains: same key parameters (no upload) or new keys (upload)."""
    X_tr, y_tr, X_te, y_te, schema = data
    name = f"{schema.name} {run['mode']} {run['scheme']} {run['owners']} owners"
    work.mkdir(parents=True, exist_ok=True)
    result, fhe_model = compile_model(model, data, run, work, key, "1")
    metrics = result.meta["metrics"]
    client, evaluation_keys, keygen_seconds = keys_of(result.directory, work / "keyset-1.bin")
    say(f"[{name}] n_bits {result.meta['n_bits']}, keys {len(evaluation_keys) / 1e6:.1f} MB in "
        f"{keygen_seconds:.1f} s; {ROWS} encrypted rows")
    rows = encrypted_rows(client, evaluation_keys, result.directory, fhe_model, X_te, schema, ROWS)
    say(f"[{name}] encrypted = simulated: {rows['encrypted_equals_simulated']}; "
        f"{rows['latency_ms_per_row']:.0f} ms/row")
    fingerprint = result.meta["key_params_sha256"]
    keyset = key_params.keyset_of_client_zip((result.directory / "client.zip").read_bytes())
    entry = {"model": name, "dataset": schema.name, "mode": run["mode"], "scheme": run["scheme"],
             "owners": run["owners"], "trees": model.n_trees, "max_depth": PARAMS.max_depth,
             "deepest_tree": model.max_depth,
             "n_bits": result.meta["n_bits"], "clear_accuracy": metrics["clear_accuracy"],
             "fhe_simulated_accuracy": metrics["fhe_simulated_accuracy"], "evaluated_rows": metrics["eval_rows"],
             **rows, "key_bytes": len(evaluation_keys), "keygen_seconds": keygen_seconds,
             "compile_seconds": result.meta["compile_seconds"], "key_params_sha256": fingerprint}

    # Retrains: (case, parameters unchanged?, how to train, n_bits for compile)
    mode, scheme, owners = run["mode"], run["scheme"], run["owners"]
    shallow = fedxgb.BoostParams(max_depth=2, eta=PARAMS.eta)
    half = max(1, run["planned_trees"] // 2)
    cases: list[tuple[str, bool, dict[str, Any], int | None]] = [
        ("same rows, same parameters", True, {}, None),
        ("other owners' rows (IID partition seed 1), same parameters", True, {"seed": 1}, None),
        ("Dirichlet(0.5) owners' rows, same parameters", True, {"scheme": "dirichlet"}, None),
        (f"half the trees (budget {half}), same depth and n_bits", True, {"max_trees": half}, None),
        ("same booster compiled with n_bits 4", False, {"reuse": True}, 4),
        ("depth 2 instead of 3", False, {"params": shallow}, None),
    ]
    retrains = []
    for i, (case, unchanged, how, n_bits) in enumerate(cases, start=2):
        if how.get("reuse"):
            new_run, new_model = run, model
        else:
            new_run, new_model = one_run(data, mode, how.get("scheme", scheme), owners, seed=how.get("seed", SEED),
                                         params=how.get("params", PARAMS),
                                         max_trees=how.get("max_trees", BUDGET.max_trees))
        new, new_fhe = compile_model(new_model, data, new_run, work, key, str(i), how.get("params", PARAMS), n_bits)
        same = new.meta["key_params_sha256"] == fingerprint
        item: dict[str, Any] = {
            "model": name, "case": case, "parameters_unchanged": unchanged, "trees": new_model.n_trees,
            "deepest_tree": new_model.max_depth, "n_bits": new.meta["n_bits"],
            "same_booster": new_model.to_bytes() == model.to_bytes(),
            "key_params_sha256": new.meta["key_params_sha256"], "same_key_params": same,
            "key_params_differences": key_params.differences(
                keyset, key_params.keyset_of_client_zip((new.directory / "client.zip").read_bytes())),
            "fhe_simulated_accuracy": new.meta["metrics"]["fhe_simulated_accuracy"]}
        if same:
            # What key reuse relies on: the owner's existing keys serve the new circuit. A client of the new
            # bundle given the first version's keyset (key_reuse.adopt_keyset: no key generation) encrypts a
            # row that the new server runs with the evaluation keys already uploaded for the first version.
            reused, reused_eval, reused_s = keys_of(new.directory, work / "keyset-1.bin")
            check = encrypted_rows(reused, evaluation_keys, new.directory, new_fhe, X_te, schema, 1)
            item |= {"upload_bytes": 0, "reused_keys_equal": reused_eval == evaluation_keys,
                     "reused_keys_seconds": reused_s,
                     "reused_keys_row_equals_simulated": check["encrypted_equals_simulated"]}
        else:
            _, new_eval, _ = keys_of(new.directory, work / f"keyset-{i}.bin")
            item["upload_bytes"] = len(new_eval)
        say(f"[{name}] retrain: {case}: same key parameters {same}, upload {item['upload_bytes'] / 1e6:.1f} MB "
            f"{item['key_params_differences']}")
        retrains.append(item)
    return entry, retrains


def worst(runs: list[dict[str, Any]], **match: Any) -> float:
    return min(r["ratio"] for r in runs if all(r[k] == v for k, v in match.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trees.json")
    args = ap.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity._run_id = 1  # type: ignore[attr-defined]  # what flwr-serverapp sets for the messages it makes
    TaskIdentity._node_id = 1  # type: ignore[attr-defined]
    TaskIdentity._task_id = 1  # type: ignore[attr-defined]
    started = time.perf_counter()
    data = {name: load(name) for name in LOADERS}
    runs, fhe_models = [], {}
    for name, d in data.items():
        for owners in OWNERS:
            for scheme in SCHEMES:
                for mode in fedxgb.MODES:
                    run, model = one_run(d, mode, scheme, owners)
                    say(f"{name:14s} {mode:8s} {scheme:9s} {owners:2d} owners: {run['trees']} trees, federated "
                        f"{run['federated_accuracy']:.4f}, centralised {run['centralised_accuracy']:.4f}, "
                        f"ratio {run['ratio']:.3f} ({run['seconds']:.1f} s)")
                    runs.append(run)
                    if (mode, scheme, owners) == FHE_CONFIG:
                        fhe_models[name] = (run, model)
    sweep_seconds = time.perf_counter() - started
    models, retrains = [], []
    with tempfile.TemporaryDirectory(prefix="fedfhe-trees-") as tmp:
        work = Path(tmp)
        make_release_key(work)
        key = load_signing_key(work / "release.key")
        for name, (run, model) in fhe_models.items():
            entry, cases = fhe_section(data[name], run, model, work / name, key)
            models.append(entry)
            retrains.extend(cases)
    from concrete.ml.version import __version__ as cml_version

    unchanged = [r["upload_bytes"] for r in retrains if r["parameters_unchanged"]]
    doc = {
        "federated_over_centralized": {name: worst(runs, dataset=name) for name in LOADERS},
        "federated_over_centralized_by_scheme": {name: {s: worst(runs, dataset=name, scheme=s) for s in SCHEMES}
                                                 for name in LOADERS},
        "goals": {"federated_over_centralized": GOALS, "retrain_upload_bytes": 0},
        "goals_met": {name: {s: worst(runs, dataset=name, scheme=s) >= GOALS[s] for s in SCHEMES}
                      for name in LOADERS},
        "encrypted_equals_simulated": all(m["encrypted_equals_simulated"] for m in models),
        "latency_ms_per_row": {m["model"]: m["latency_ms_per_row"] for m in models},
        "key_bytes": {m["model"]: m["key_bytes"] for m in models},
        "retrain_upload_bytes": max(unchanged),
        "retrain_upload_bytes_by_dataset": {name: max(r["upload_bytes"] for r in retrains
                                                      if r["parameters_unchanged"] and r["model"].startswith(name))
                                            for name in fhe_models},
        "models": models,
        "retrains": retrains,
        "runs": runs,
        "test_rows": {name: int(len(d[3])) for name, d in data.items()},
        "params": PARAMS.to_dict(),
        "budget": {"max_trees": BUDGET.max_trees, "max_depth": BUDGET.max_depth, "max_n_bits": BUDGET.max_n_bits},
        "notes": [
            f"test split: {int(100 * TEST_FRACTION)} % stratified, seed {SEED}; columns min-max scaled by the "
            "training split's range into the schema's [0, 1] (trees are unchanged by it; FHE quantises each "
            "column over the declared bounds)",
            "one test row weighs 1/143 of the accuracy on breast cancer, 1/45 on wine (test_rows): a ratio "
            "moves by about 0.007 or 0.023 per row",
            "owners: fedfhe_testbed.partition, seed 0; Dirichlet(0.5) over labels with at least 10 rows per owner, "
            "5 where 10 cannot be drawn (dirichlet_min_rows in the run)",
            "rounds = 30 // trees per round (bagging: every owner adds one boosting round's trees per round; "
            "cyclic: one owner per round); the centralised reference boosts the federated model's tree count "
            "with the same parameters on the pooled training split",
            "the in-process loop has no network, no ServerApp, no owners' held-out rows: it measures the "
            "aggregation, not the deployment",
            SHARED_MACHINE,
        ],
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "concrete_ml": cml_version,
                    "xgboost": xgb.__version__, "platform": platform.platform(), "shared": True},
        "command": "python bench/trees.py",
        "sweep_seconds": sweep_seconds,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'dataset':14s} {'mode':8s} {'scheme':9s} {'owners':>6s} {'trees':>5s} {'fed.':>7s} {'central':>7s} "
          f"{'ratio':>6s}")
    for r in runs:
        print(f"{r['dataset']:14s} {r['mode']:8s} {r['scheme']:9s} {r['owners']:6d} {r['trees']:5d} "
              f"{r['federated_accuracy']:7.4f} {r['centralised_accuracy']:7.4f} {r['ratio']:6.3f}")
    for name, by in doc["federated_over_centralized_by_scheme"].items():
        print(f"federated / centralised, {name}: worst {doc['federated_over_centralized'][name]:.3f} "
              f"(IID {by['iid']:.3f}, goal {GOALS['iid']}; Dirichlet {by['dirichlet']:.3f}, goal {GOALS['dirichlet']})")
    for m in models:
        print(f"{m['model']}: n_bits {m['n_bits']}, encrypted = simulated {m['encrypted_equals_simulated']} on "
              f"{m['encrypted_rows']} rows, {m['latency_ms_per_row']:.0f} ms/row, keys {m['key_bytes'] / 1e6:.1f} MB")
    for r in retrains:
        print(f"  retrain of {r['model'].split()[0]}, {r['case']}: same key parameters {r['same_key_params']}, "
              f"upload {r['upload_bytes']} bytes")
    print(f"retrain_upload_bytes (unchanged parameters): {doc['retrain_upload_bytes']}")
    print(f"wrote {args.out} in {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    exit_with(main)
