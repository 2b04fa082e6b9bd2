"""The ServerApp's round table over the checked FedXgb strategies: a refused booster is its owner's failure for the
round, with the reason, in the progress file; a cyclic round of one owner is a full round, not a lost node."""

from __future__ import annotations

import json
import random
import re

import pytest
from fedxgb_harness import LoopGrid, federate, split
from flwr.app import ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from fedfhe_common.ml import fedxgb
from fedfhe_coordinator.serverapp import federated_trees
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy
from fedfhe_coordinator.serverapp.tree_recording import RecordingXgbBagging, RecordingXgbCyclic, make_tree_strategy
from fedfhe_coordinator.serverapp.tree_strategy import TreeBudget, booster_record


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    random.seed(0)
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_a_refused_booster_is_in_the_round_table_and_the_rest_aggregate(tmp_path):
    X_tr, _, y_tr, _, schema = split("breast-cancer")
    params = fedxgb.BoostParams(max_depth=3)
    progress = tmp_path / "progress.jsonl"
    # min_nodes 2 of 3: a round keeps going with one owner refused (with 3, Recording stops the run: NodesLost).
    strategy = make_tree_strategy("bagging", progress, ReplyPolicy("XGBClassifier", schema), {}, 1.0, 2, params, 9)
    assert isinstance(strategy, RecordingXgbBagging)

    def deeper(server_round: int, node: int, raw: bytes) -> bytes:
        return raw.replace(b'"split_indices":[', b'"split_indices":[99,', 1) if server_round == 2 and node == 13 \
            else raw

    federate("bagging", X_tr, y_tr, schema, params, 3, 9, deeper, strategy=strategy)
    assert strategy.global_model is not None and strategy.global_model.n_trees == 8
    rounds = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]  # round 3 is flushed once the next round's scores arrive
    assert rounds[1]["fit_owners"] == ["node-11", "node-12"]
    [failure] = rounds[1]["failures"]
    assert {k: failure[k] for k in ("phase", "node_id", "owner")} == {"phase": "fit", "node_id": 13, "owner": "node-13"}
    assert re.fullmatch(r"booster refused: tree 0.split_indices must list \d+ integers", failure["reason"])
    assert rounds[1]["clients"]["accuracy"] > 0.9  # the owners' scores of round 2's model, from round 3's replies


def test_a_cyclic_round_of_one_owner_is_a_full_round(tmp_path):
    X_tr, _, y_tr, _, schema = split("breast-cancer")
    params = fedxgb.BoostParams(max_depth=3)
    progress = tmp_path / "progress.jsonl"
    strategy = make_tree_strategy("cyclic", progress, ReplyPolicy("XGBClassifier", schema), {}, 1.0, 3, params, 4)
    assert isinstance(strategy, RecordingXgbCyclic)
    federate("cyclic", X_tr, y_tr, schema, params, 4, 4, strategy=strategy)
    assert strategy.global_model is not None and strategy.global_model.n_trees == 4
    rounds = [json.loads(line) for line in progress.read_text().splitlines()]
    owners = [r["fit_owners"] for r in rounds]
    assert all(len(o) == 1 for o in owners) and sorted(o[0] for o in owners) == ["node-11", "node-12", "node-13"]
    assert all(r["failures"] == [] and r["missing"] == [] for r in rounds)


@pytest.mark.parametrize("mode", ["bagging", "cyclic"])
def test_flowers_own_loop_trains_a_booster_the_artifact_takes(tmp_path, mode):
    """Strategy.start (what the ServerApp calls) with the owners' train_reply / evaluate_reply behind the grid:
    its Result holds the final booster, which federated_trees turns into the training artifact."""
    X_tr, X_te, y_tr, y_te, schema = split("breast-cancer")
    params = fedxgb.BoostParams(max_depth=3)
    rounds = 3
    trees = TreeBudget(max_trees=60, max_depth=3).check_run(schema, params, mode, rounds, owners=3)
    strategy = make_tree_strategy(mode, tmp_path / "progress.jsonl", ReplyPolicy("XGBClassifier", schema), {}, 1.0,
                                  3, params, trees)
    strategy.fraction_evaluate = 1.0  # one final evaluate round by the owners (a plain run's last scores)
    config = ConfigRecord(fedxgb.instruction(mode, params, trees))
    result = strategy.start(LoopGrid(X_tr, y_tr, schema), booster_record(None), num_rounds=rounds,
                            train_config=config, evaluate_config=config)
    raw = result.arrays["0"].numpy().tobytes()
    artifact = federated_trees.to_artifact(raw, "XGBClassifier", schema, params, trees, mode=mode, rounds=rounds)
    assert artifact.metrics["tree"]["trees"] == trees
    accuracy = float((artifact.to_estimator().predict(X_te) == y_te).mean())
    evaluated = result.evaluate_metrics_clientapp[rounds]["eval-accuracy"]
    print(f"{mode}: Strategy.start, {trees} trees, held-out accuracy {accuracy:.4f}, owners' own {evaluated:.4f}")
    assert accuracy > 0.9 and evaluated > 0.9
