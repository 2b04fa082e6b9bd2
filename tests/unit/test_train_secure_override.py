"""`fedfhe-coordinator train --secure-aggregation` (issue 13): one secure run without editing coordinator.yaml.

The flag overrides ``training.secure_aggregation.enabled`` for that run only; the section's other
keys come from the config and are checked again with the new mode, before anything starts.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from coordinator_yaml import write_coordinator_yaml

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator import cli
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.train.flwr_cli import write_run_config
from fedfhe_coordinator.train.training import with_secure_aggregation


def write(tmp_path: Path, owners: int = 3, aggregation: str = "fedavg", **section: object) -> Path:
    return write_coordinator_yaml(tmp_path, owners, {"min_nodes": 2, "aggregation": aggregation,
                                                     "secure_aggregation": {"enabled": False, **section}},
                                  real_keys=True)


def test_the_flag_turns_secure_aggregation_on_and_keeps_the_sections_other_keys(tmp_path):
    cfg = coord.load(write(tmp_path, clipping_range=4.0, max_weight=500.0, reconstruction_threshold=3))
    assert cfg.training.secure_aggregation.enabled is False
    assert with_secure_aggregation(cfg, None) is cfg  # no flag: as configured
    on = with_secure_aggregation(cfg, True)
    sa = on.training.secure_aggregation
    assert sa.enabled is True
    assert (sa.clipping_range, sa.max_weight, sa.reconstruction_threshold) == (4.0, 500.0, 3)
    assert on.training.output_dir == cfg.training.output_dir and on.state_dir == cfg.state_dir
    # What the run carries to the ServerApp and the owners (the SuperLink keeps running as it is).
    run = tomllib.loads(write_run_config(on, RunConfig.from_coordinator(on, {"num-server-rounds": 2})).read_text())
    assert run[fc.RUN_SECURE] is True and run[fc.RUN_SECAGG_CLIPPING_RANGE] == 4.0
    assert run[fc.RUN_SECAGG_MAX_WEIGHT] == 500.0 and run["secagg-reconstruction-threshold"] == 3
    assert run["num-server-rounds"] == 2
    off = with_secure_aggregation(on, False)
    assert off.training.secure_aggregation.enabled is False


def test_turning_it_on_is_checked_naming_the_flag_and_the_key(tmp_path):
    cfg = coord.load(write(tmp_path, aggregation="fedmedian"))  # fine while secure aggregation is off
    with pytest.raises(ConfigError) as err:
        with_secure_aggregation(cfg, True)
    text = str(err.value)
    assert text.startswith("--secure-aggregation (training.secure_aggregation.enabled: true for this run): ")
    assert "training.secure_aggregation.enabled: SecAgg+ sums masked updates, so only fedavg" in text


def test_turning_it_off_under_dp_is_refused_naming_the_key(tmp_path):
    cfg = coord.load(write(tmp_path, enabled=True, noise_multiplier=0.5))
    with pytest.raises(ConfigError) as err:
        with_secure_aggregation(cfg, False)
    assert "--no-secure-aggregation" in str(err.value)
    assert "training.secure_aggregation.noise_multiplier: differential privacy runs on the secure sum" in str(err.value)


@pytest.mark.parametrize(("flag", "section", "aggregation", "message"), [
    ("--secure-aggregation", {}, "fedtrimmedavg",
     "only fedavg, fedavgm or newton can aggregate them, not training.aggregation fedtrimmedavg"),
    ("--no-secure-aggregation", {"enabled": True, "noise_multiplier": 1.0}, "fedavg",
     "training.secure_aggregation.noise_multiplier"),
])
def test_train_parses_the_flag_and_refuses_before_contacting_the_superlink(tmp_path, capsys, flag, section,
                                                                            aggregation, message):
    path = write(tmp_path, aggregation=aggregation, **section)
    assert cli.main(["train", "--config", str(path), flag]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fedfhe-coordinator train: error: {flag} (training.secure_aggregation.enabled: ")
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()  # nothing started: no run config, no FLWR_HOME


def test_the_flag_is_optional_and_boolean(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--config", str(write(tmp_path)), "--secure-aggregation=yes"])
    assert exit_.value.code == 2  # argparse: a switch, not a value
    assert "--secure-aggregation" in capsys.readouterr().err


def test_the_run_report_says_whether_secure_aggregation_was_on(tmp_path):
    """report.json / report.md (what train.yml fetches) carry the artifact's privacy summary."""
    from fedfhe_common.contracts.schema import DIGITS
    from fedfhe_coordinator.train import report

    class Artifact:
        family, schema = "LogisticRegression", DIGITS
        metrics = {"rounds": 1, "per_round": [], "privacy": {"secure_aggregation": True, "owners": 3,
                                                              "reconstruction_threshold": 2}}

    rep = report.training_report(Artifact(), run_id=7, status="finished:completed", owners=["a", "b", "c"], seconds=1)
    assert rep["privacy"]["secure_aggregation"] is True
    assert "Secure aggregation: on (SecAgg+" in report.markdown(rep, plot=False)
    assert "threshold 2 of 3 owners" in report.markdown(rep, plot=False)
    Artifact.metrics = {"rounds": 1, "per_round": []}  # an artifact from before privacy was recorded
    plain = report.training_report(Artifact(), run_id=8, status="", owners=[], seconds=1)
    assert plain["privacy"] == {"secure_aggregation": False}
    assert "Secure aggregation: off" in report.markdown(plain, plot=False)
