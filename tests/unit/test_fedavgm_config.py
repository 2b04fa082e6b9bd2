"""training.aggregation fedavgm (issue 14): its keys are checked by name, and the run uses Flower's FedAvgM.

FedProx is not offered (fedfhe_coordinator.aggregation says why): asking for it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvgM
from flwr.supercore.task_identity import TaskIdentity

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models
from fedfhe_common.runtime.config import from_dict
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator import cli as server_cli
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy, make_strategy
from fedfhe_coordinator.train.flwr_cli import write_run_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = resolve_schema("digits")
FAMILY = "LogisticRegression"


def coordinator(tmp_path: Path, keys: tuple[str, ...] = ("pki/alice.supernode.pub",), **training: object,
                ) -> CoordinatorConfig:
    data = {"superlink": {"certfile": "a", "keyfile": "b", "ca_certfile": "c"}, "state_dir": "s", "release_key": "k",
            "supernode_public_keys": list(keys),
            "training": {"output_dir": "o", **training}}
    return from_dict(CoordinatorConfig, data, base=tmp_path)


@pytest.mark.parametrize(("training", "message"), [
    ({"aggregation": "fedavgm", "server_momentum": 1.0}, "training.server_momentum: must be >= 0 and < 1"),
    ({"aggregation": "fedavgm", "server_momentum": -0.1}, "training.server_momentum"),
    ({"aggregation": "fedavgm", "server_learning_rate": 0.0}, "training.server_learning_rate: must be > 0"),
    ({"aggregation": "fedavgm", "server_learning_rate": 11.0}, "training.server_learning_rate"),
    ({"aggregation": "fedavgm", "server_momentum": "fast"}, "training.server_momentum"),
    ({"server_momentum": 0.9}, "training.server_momentum: only aggregation fedavgm uses it, not auto"),
    ({"aggregation": "fedmedian", "server_learning_rate": 0.5}, "training.server_learning_rate: only"),
    ({"aggregation": "fedprox"}, "training.aggregation"),
])
def test_bad_fedavgm_settings_are_refused_naming_the_key(tmp_path, training, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        coordinator(tmp_path, **training)


def test_fedavgm_settings_reach_the_run_config(tmp_path):
    cfg = coordinator(tmp_path, (), aggregation="fedavgm", server_learning_rate=0.5, server_momentum=0.9)
    run_config = write_run_config(cfg, RunConfig.from_coordinator(cfg)).read_text()
    assert 'aggregation = "fedavgm"' in run_config
    assert "server-learning-rate = 0.5" in run_config and "server-momentum = 0.9" in run_config


def test_check_config_and_json_schema_refuse_a_momentum_of_one(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "server" / "coordinator.example.yaml").read_text())
    data["training"] |= {"aggregation": "fedavgm", "server_momentum": 1.0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert server_cli.main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 1
    assert "training.server_momentum" in capsys.readouterr().err
    jsonschema = pytest.importorskip("jsonschema")
    assert server_cli.main(["check-config", "--json-schema"]) == 0
    validator = jsonschema.Draft202012Validator(json.loads(capsys.readouterr().out))
    assert list(validator.iter_errors(data)), "server_momentum 1.0 must be refused by the JSON schema"
    data["training"]["server_momentum"] = 0.9
    assert not list(validator.iter_errors(data))


class Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def get_nodes(self) -> list:
        return [SimpleNamespace(node_id=n, public_key=f"key-{n}".encode(), name="") for n in self.nodes]

    def push(self, messages: list[Message]) -> list[Message]:
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        return messages


@pytest.fixture
def task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def reply(value: float, to: Message) -> Message:
    c, i = models.initial_parameters(FAMILY, SCHEMA)
    metrics = {"num-examples": 100, "fit-seconds": 0.1, "eval-examples": 20, "eval-seconds": 0.01,
               "eval-accuracy": 0.9, "eval-loss": 0.3}
    return Message(RecordDict({fc.ARRAYS: to_arrays([c + value, i + value]), fc.METRICS: MetricRecord(metrics)}),
                   reply_to=to)


def test_fedavgm_steps_with_server_momentum(tmp_path, task_identity):
    """Two rounds whose owners all move to 0.2, then 0.3: FedAvg would give 0.3; momentum 0.5 gives 0.4."""
    s = make_strategy("fedavgm", tmp_path / "progress.jsonl", ReplyPolicy(FAMILY, SCHEMA), owner_keys={},
                      node_wait=1.0, min_nodes=2, server_learning_rate=1.0, server_momentum=0.5)
    assert isinstance(s, FedAvgM) and s.server_momentum == 0.5 and s.server_opt
    grid = Grid([1, 2])
    arrays = to_arrays(models.initial_parameters(FAMILY, SCHEMA))
    for server_round, value in ((1, 0.2), (2, 0.3)):
        sent = grid.push(list(s.configure_train(server_round, arrays, ConfigRecord({}), grid)))
        arrays, _ = s.aggregate_train(server_round, [reply(value, m) for m in sent])
        assert s.entry(server_round)["fit_owners"] == ["node-1", "node-2"]
    # round 1: v = -0.2, w = 0.2; round 2: v = 0.5 * -0.2 + (0.2 - 0.3) = -0.2, w = 0.2 + 0.2 = 0.4
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 0.4)
