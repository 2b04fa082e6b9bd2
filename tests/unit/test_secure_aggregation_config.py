"""training.secure_aggregation (issue 13): a bad section is refused before anything starts, naming the key;
owners refuse a SecAgg+ setup whose threshold would let the coordinator unmask one of them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from coordinator_yaml import write_coordinator_yaml
from flwr.app import Context, RecordDict

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.procs import venv_bin
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.secure_training import resolve_shares
from fedfhe_coordinator.train.training import preflight


def write(tmp_path: Path, owners: int, **section: object) -> Path:
    return write_coordinator_yaml(tmp_path, owners, {"min_nodes": min(owners, 2) or 1, "secure_aggregation": section})


@pytest.mark.parametrize(("owners", "section", "message"), [
    (3, {"enabled": True, "reconstruction_threshold": 4},
     "training.secure_aggregation.reconstruction_threshold: 4 is above the number of owners (3)"),
    (3, {"enabled": True, "clipping_range": -1.0}, "training.secure_aggregation.clipping_range: must be > 0, got -1.0"),
    (3, {"quantization_range": -5}, "training.secure_aggregation.quantization_range: must be >= 2, got -5"),
    (3, {"max_weight": 0}, "training.secure_aggregation.max_weight: must be >= 1, got 0"),
    (10, {"enabled": True, "reconstruction_threshold": 5},
     "training.secure_aggregation.reconstruction_threshold: 5 is not a strict majority of the 10 shares"),
    (3, {"num_shares": 2}, "training.secure_aggregation.num_shares: must be 0 (every owner) or at least 3, got 2"),
    (10, {"enabled": True, "num_shares": 5},
     "training.secure_aggregation.num_shares: 5 of 10 owners: owners take part only where each holds a share"),
    (100, {"enabled": True, "quantization_range": 2**26},
     "training.secure_aggregation.quantization_range: 100 owners' sum of 67108864 levels overflows"),
    (3, {"enabled": False, "noise_multiplier": 1.0},
     "training.secure_aggregation.noise_multiplier: differential privacy runs on the secure sum; set enabled: true"),
    (3, {"enabled": True, "noise_multiplier": -0.5},
     "training.secure_aggregation.noise_multiplier: must be >= 0, got -0.5"),
])
def test_bad_section_is_refused_naming_the_key(tmp_path, owners, section, message):
    with pytest.raises(ConfigError) as err:
        coord.load(write(tmp_path, owners, **section))
    assert message in str(err.value)


def test_a_robust_aggregation_cannot_run_on_masked_updates(tmp_path):
    path = write(tmp_path, 3, enabled=True)
    cfg = yaml.safe_load(path.read_text())
    cfg["training"] |= {"aggregation": "fedmedian"}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        coord.load(path)
    assert "training.secure_aggregation.enabled: SecAgg+ sums masked updates, so only fedavg" in str(err.value)


@pytest.mark.parametrize(("owners", "on"), [(0, False), (2, False), (3, True), (10, True)])
def test_auto_is_secure_from_three_owners(tmp_path, owners, on):
    """The default (enabled: auto): SecAgg+ wherever owners' default policy (three or more per sum) allows it."""
    cfg = coord.load(write(tmp_path, owners))
    assert cfg.training.secure_aggregation.enabled is on
    assert RunConfig.from_training(cfg.training).to_flower()[fc.RUN_SECURE] is on


def regressor_config(tmp_path: Path, schema: str, **section: object) -> Path:
    path = write(tmp_path, 3, **section)
    cfg = yaml.safe_load(path.read_text())
    cfg["training"] |= {"model": "Lasso", "schema": schema}
    path.write_text(yaml.safe_dump(cfg))
    return path


def unbounded_regression_schema(tmp_path: Path) -> str:
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump({"name": "unbounded", "task": "regression", "label_column": "y",
                                      "columns": [{"name": "x", "kind": "numeric", "min": 0, "max": 1}]}))
    return str(schema)


def test_auto_makes_a_regressor_secure_when_its_schema_bounds_the_target(tmp_path):
    """SecAgg+ carries a regressor's parameters in units of the declared target range (secure_target)."""
    assert coord.load(regressor_config(tmp_path, "diabetes")).training.secure_aggregation.enabled is True


def test_auto_leaves_a_regressor_plain_without_target_bounds_and_true_is_refused(tmp_path):
    schema = unbounded_regression_schema(tmp_path)
    assert coord.load(regressor_config(tmp_path, schema)).training.secure_aggregation.enabled is False
    cfg = coord.load(regressor_config(tmp_path, schema, enabled=True))
    with pytest.raises(ConfigError, match="training.secure_aggregation.enabled: schema unbounded: under secure "
                                          "aggregation a regressor's parameters travel in units of its target's "
                                          "declared range"):
        preflight(cfg)


def test_auto_with_a_robust_aggregation_is_refused_not_run_plain(tmp_path):
    path = write(tmp_path, 3)
    cfg = yaml.safe_load(path.read_text())
    cfg["training"] |= {"aggregation": "fedmedian"}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="training.aggregation fedmedian needs each owner's update in the clear, and "
                                          r"training.secure_aggregation.enabled is auto \(on with 3 owners\)"):
        coord.load(path)
    cfg["training"]["secure_aggregation"] = {"enabled": False}
    path.write_text(yaml.safe_dump(cfg))
    assert coord.load(path).training.secure_aggregation.enabled is False


def test_every_problem_of_the_section_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        coord.load(write(tmp_path, 3, enabled=True, reconstruction_threshold=4, num_shares=2))
    text = str(err.value)
    assert "3 problems: " in text and "num_shares: must be 0" in text and "above the number of owners" in text


def test_defaults_suit_3_to_100_owners(tmp_path):
    for owners in (3, 10, 100):
        training = coord.load(write(tmp_path, owners, enabled=True)).training
        cfg = training.secure_aggregation
        shares, threshold = resolve_shares(cfg.num_shares, cfg.reconstruction_threshold, owners)
        assert shares == 1.0 and threshold == owners // 2 + 1  # every owner holds a share; a strict majority
        fc.check_secagg_setup(owners, threshold, owners)  # what the owners accept
        assert (owners + 1) * cfg.quantization_range <= coord.SECAGG_MODULUS
    run = RunConfig.from_training(training).to_flower()
    assert run[fc.RUN_SECURE] is True and run[fc.RUN_DP_NOISE_MULTIPLIER] == 0.0  # DP off by default


def test_train_refuses_the_config_before_starting_anything(tmp_path):
    """`fedfhe-coordinator train` with a bad section: exit 1, one line naming the key, no SuperLink contacted."""
    path = write(tmp_path, 3, enabled=True, reconstruction_threshold=4)
    res = subprocess.run([venv_bin("fedfhe-coordinator"), "train", "--config", str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 1, res
    assert "training.secure_aggregation.reconstruction_threshold: 4 is above the number of owners (3)" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("shares", "threshold", "sample", "ok"), [
    (3, 2, 3, True), (10, 6, 10, True), (3, 2, 2, True),
    (10, 5, 10, False), (3, 1, 3, False), (2, 2, 1, False), ("3", 2, 3, False), (True, 2, 3, False),
])
def test_owner_checks_the_secagg_setup(shares, threshold, sample, ok):
    if ok:
        fc.check_secagg_setup(shares, threshold, sample)
    else:
        with pytest.raises(fc.InstructionRefused):
            fc.check_secagg_setup(shares, threshold, sample)


def test_owner_bounds_its_update_before_masking():
    from fedfhe_owner.clientapp.secure_client import bound_update

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                  run_config={fc.RUN_SECAGG_CLIPPING_RANGE: 2.0, fc.RUN_SECAGG_MAX_WEIGHT: 100.0})
    params, weight = bound_update([np.array([[-5.0, 1.0]]), np.array([3.0])], 500, ctx)
    assert weight == 100  # capped at max_weight: Flower would overflow past it
    np.testing.assert_array_equal(params[0], [[-2.0, 1.0]])
    np.testing.assert_array_equal(params[1], [2.0])
    assert bound_update([np.zeros(1)], 40, ctx)[1] == 40
