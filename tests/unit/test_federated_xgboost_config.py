"""Federated XGBoost's settings (issue 27): coordinator.yaml training.xgboost and xgboost_budget reach the run config
checked against the planned trees; boosting runs are plain; owners' privacy.trees reaches their ClientApp; owners
refuse a boosting run under SecAgg+ or under their local DP before a row is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from coordinator_yaml import write_coordinator_yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.config import parse_config_args

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.ml import fedxgb
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.train.training import preflight
from fedfhe_owner import config as owner_config
from fedfhe_owner.clientapp.secure_client import privacy_mod
from fedfhe_owner.supernode.launch import node_config


def write(tmp_path: Path, owners: int = 3, **training: object) -> Path:
    return write_coordinator_yaml(tmp_path, owners, {"min_nodes": owners, "schema": "digits", **training})


def test_a_boosting_plan_reaches_the_run_config_plain(tmp_path):
    cfg = coord.load(write(tmp_path, model="XGBClassifier", rounds=2,
                           xgboost={"mode": "cyclic", "max_depth": 3, "eta": 0.5, "local_rounds": 2},
                           xgboost_budget={"max_trees": 40, "max_depth": 3, "max_n_bits": 5}))
    preflight(cfg)  # XGBoost federates: no "train-local" refusal
    assert cfg.training.secure_aggregation.enabled is False  # auto: boosters are not sums SecAgg+ can take
    run = RunConfig.from_training(cfg.training, {f"k{i}": f"owner-{i}" for i in range(3)})
    # cyclic: one owner a round, 2 local rounds, 10 trees (digits' classes) each: 2 x 2 x 10 = 40
    assert (run.xgboost_mode, run.xgboost_max_trees, run.xgboost_max_n_bits) == ("cyclic", 40, 5)
    assert run.xgboost_combine == "average"  # auto, for a classifier
    assert fedxgb.BoostParams.from_mapping(run.xgboost_params) == fedxgb.BoostParams(max_depth=3, eta=0.5,
                                                                                     local_rounds=2)
    assert RunConfig.from_flower(run.to_flower()) == run  # survives Flower's flat table


@pytest.mark.parametrize(("training", "message"), [
    ({"model": "XGBClassifier", "xgboost": {"max_depth": 3}, "xgboost_budget": {"max_trees": 50}},
     r"training.xgboost_budget: bagging: 3 rounds x 3 owner\(s\) x 1 local round\(s\) x 10 tree\(s\) = 90 trees, "
     r"above the budget's max_trees 50"),
    ({"model": "XGBClassifier", "xgboost": {"max_depth": 5}, "xgboost_budget": {"max_depth": 4}},
     r"xgboost max_depth 5 exceeds the budget's 4"),
    ({"model": "XGBClassifier", "xgboost": {"mode": "boosting"}}, r"training.xgboost.mode: 'boosting' is not one of"),
    ({"model": "XGBClassifier", "xgboost": {"depth": 3}}, r"training.xgboost: unknown parameter 'depth'"),
    ({"model": "XGBClassifier", "xgboost": {"combine": "mean"}},
     r"training.xgboost.combine: 'mean' is not one of auto, average, sum"),
    ({"model": "LogisticRegression", "xgboost": {"max_depth": 3}},
     r"training.xgboost and training.xgboost_budget apply to XGBClassifier and XGBRegressor only"),
    ({"model": "XGBClassifier", "rounds": 1, "secure_aggregation": {"enabled": True}},
     r"model XGBClassifier trains in plain runs only"),
    ({"model": "XGBClassifier", "rounds": 1, "aggregation": "fedmedian", "secure_aggregation": {"enabled": False}},
     r"training.aggregation fedmedian: model XGBClassifier aggregates with Flower's FedXgb strategies"),
])
def test_a_bad_boosting_section_is_refused_naming_it(tmp_path, training, message):
    with pytest.raises(ConfigError, match=message):
        coord.load(write(tmp_path, **training))


def test_a_regressor_sums_bagged_trees_unless_told_otherwise(tmp_path):
    cfg = coord.load(write(tmp_path, model="XGBRegressor", schema="diabetes", rounds=2, xgboost={"max_depth": 2},
                           secure_aggregation={"enabled": False}))
    assert RunConfig.from_training(cfg.training).xgboost_combine == "sum"  # base_score 0.5: averaged steps crawl
    cfg = coord.load(write(tmp_path, model="XGBRegressor", schema="diabetes", rounds=2,
                           xgboost={"max_depth": 2, "combine": "average"}, secure_aggregation={"enabled": False}))
    assert RunConfig.from_training(cfg.training).xgboost_combine == "average"


def test_forests_still_refuse_federated_training(tmp_path):
    with pytest.raises(ConfigError, match="'RandomForestClassifier' is a tree family with no federated learner"):
        preflight(coord.load(write(tmp_path, model="RandomForestClassifier")))


def owner_yaml(tmp_path: Path, privacy: dict) -> Path:
    path = tmp_path / "owner.yaml"
    path.write_text(yaml.safe_dump({
        "owner_id": "owner-0", "superlink": "127.0.0.1:9092", "root_certificates": "ca.crt", "auth_key": "k",
        "data": str(tmp_path / "d.csv"), "state_dir": str(tmp_path / "s"), "privacy": privacy}))
    return path


def test_owner_tree_policy_reaches_the_clientapp_and_bad_values_are_refused(tmp_path):
    cfg = owner_config.load(owner_yaml(tmp_path, {"trees": {"max_depth": 3, "max_trees": 20,
                                                            "min_child_weight": 5.0}}))
    node = parse_config_args([node_config(cfg)])  # how flower-supernode reads --node-config
    assert fedxgb.OwnerTreePolicy.from_node_config(node) == fedxgb.OwnerTreePolicy(3, 20, 5.0)
    policy = fedxgb.OwnerTreePolicy(3, 20, 5.0)
    with pytest.raises(ConfigError, match=r"max_depth 4 above this owner's 3; 30 trees above this owner's 20; "
                                          r"min_child_weight 1 below this owner's floor 5"):
        fedxgb.read_instruction(fedxgb.instruction("bagging", fedxgb.BoostParams(max_depth=4), 30), policy)
    with pytest.raises(ConfigError, match=r"privacy.trees.max_depth: 0 not within 1"):
        owner_config.load(owner_yaml(tmp_path, {"trees": {"max_depth": 0}}))


def boosting_message(model: str = "XGBClassifier") -> Message:
    config = ConfigRecord({fc.MODEL: model, **fedxgb.instruction("bagging", fedxgb.BoostParams(), 30)})
    content = RecordDict({fc.CONFIG: config, fc.ARRAYS: ArrayRecord([np.zeros(0, dtype=np.uint8)])})
    return Message(content=content, dst_node_id=1, message_type="train")


def test_an_owner_with_local_dp_refuses_a_boosting_run_before_training(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    node = {fc.NODE_REQUIRE_SECURE: False, fc.NODE_LOCAL_DP_CLIPPING_NORM: 1.0, fc.NODE_LOCAL_DP_EPSILON: 0.5,
            fc.NODE_LOCAL_DP_DELTA: 1e-5, fc.NODE_LOCAL_DP_SENSITIVITY: 2.0}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    msg = boosting_message()
    msg.metadata.__dict__["_message_id"] = msg.object_id
    called = []
    with pytest.raises(fc.InstructionRefused, match="a booster's JSON trees cannot carry that noise"):
        privacy_mod(msg, context, lambda m, c: called.append(m))
    assert called == []
