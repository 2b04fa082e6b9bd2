"""The one run config contract (issue 28): the Flower App's declared keys and defaults are ``RunConfig()``'s,
what the coordinator writes is what the ServerApp reads back, and a bad value names its key."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from flwr.common.config import flatten_dict, parse_config_args
from test_fl_contract import coordinator

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.train.flwr_cli import flower_app_dir, write_run_config


def declared() -> dict:
    return tomllib.loads((flower_app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def typed(values: dict) -> dict:
    """Values with their types: 300 and 300.0 are equal in Python, not in TOML (nor to the check in from_flower)."""
    return {k: (type(v).__name__, v) for k, v in values.items()}


def test_the_flower_apps_defaults_are_run_configs():
    """`flwr run` refuses a key the pyproject does not declare; the ServerApp refuses one RunConfig lacks."""
    assert typed(flatten_dict(declared())) == typed(RunConfig().to_flower())


def test_the_keys_the_clientapp_reads_are_run_config_keys():
    keys = RunConfig().to_flower()
    for key in (fc.RUN_SECURE, fc.RUN_SECAGG_CLIPPING_RANGE, fc.RUN_SECAGG_MAX_WEIGHT, fc.RUN_DP_NOISE_MULTIPLIER):
        assert key in keys


def example() -> RunConfig:
    return RunConfig(num_server_rounds=7, model="Ridge", model_params={"alpha": 0.5, "fit_intercept": False},
                     public_test="/data/test.csv", round_timeout=12.5, owner_keys={"ab12": "alice", "cd34": "bob"},
                     max_examples=900, max_examples_per_owner={"alice": 300, "bob.eu": 40},
                     secure_aggregation=True, secagg_max_weight=500.0, test_record_dir="/tmp/x")


def test_round_trip():
    assert RunConfig.from_flower(RunConfig().to_flower()) == RunConfig()
    assert RunConfig.from_flower(example().to_flower()) == example()


def test_round_trip_through_the_toml_file_flwr_run_reads(tmp_path):
    """The file `flwr run --run-config` parses (flatten_dict over tomli): what the ServerApp gets back."""
    cfg = dataclasses.replace(coordinator(tmp_path), supernode_public_keys=[])  # no key files to read here
    run = dataclasses.replace(RunConfig.from_coordinator(cfg, {"num-server-rounds": 1}), **{
        "owner_keys": example().owner_keys, "max_examples_per_owner": example().max_examples_per_owner})
    parsed = parse_config_args([str(write_run_config(cfg, run))])
    assert sorted(set(parsed) - set(flatten_dict(declared()))) == []  # else "Invalid run configuration"
    assert RunConfig.from_flower(parsed) == run and run.num_server_rounds == 1


def test_from_coordinator_takes_the_training_section_and_checked_overrides(tmp_path):
    training = coordinator(tmp_path, rounds=4, max_examples_per_owner={"default": 300, "alice": 900}).training
    run = RunConfig.from_training(training)
    assert (run.num_server_rounds, run.max_examples, run.max_examples_per_owner) == (4, 300, {"alice": 900})
    assert run.aggregation == training.aggregation == "auto"
    cfg = dataclasses.replace(coordinator(tmp_path), supernode_public_keys=[])  # no key files to read here
    assert RunConfig.from_coordinator(cfg, {"test-record-dir": "/r"}).test_record_dir == "/r"
    with pytest.raises(ConfigError, match="unknown key.*'num-rounds'"):
        RunConfig.from_coordinator(cfg, {"num-rounds": 2})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("min-nodes", "2", "run config key 'min-nodes': expected an integer, got '2'"),
    ("min-nodes", True, "run config key 'min-nodes': expected an integer, got True"),
    ("round-timeout", "soon", "run config key 'round-timeout': expected a number, got 'soon'"),
    (fc.RUN_SECURE, 1, "run config key 'secure-aggregation': expected true or false, got 1"),
    ("model", 3, "run config key 'model': expected a string, got 3"),
    ("owner-keys", "[1]", "run config key 'owner-keys': expected a JSON object in a string, got '[1]'"),
    ("max-examples-per-owner", '{"alice": "many"}',
     "run config key 'max-examples-per-owner': 'alice' must map to an integer, got 'many'"),
])
def test_a_bad_value_is_refused_naming_its_key(key, value, message):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(RunConfig().to_flower() | {key: value})
    assert str(err.value) == message


def test_a_missing_key_is_named():
    values = RunConfig().to_flower()
    del values["wait-for-nodes"]
    with pytest.raises(ConfigError, match="run config: missing key 'wait-for-nodes'"):
        RunConfig.from_flower(values)


def test_an_integer_is_a_number():
    """TOML writes 300 for a float an operator typed as 300 (`flwr run --run-config 'round-timeout=300'`)."""
    run = RunConfig.from_flower(RunConfig().to_flower() | {"round-timeout": 300})
    assert run.round_timeout == 300.0 and isinstance(run.round_timeout, float)
