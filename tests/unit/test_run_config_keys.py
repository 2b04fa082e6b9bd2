"""Every run config key the coordinator writes is declared by the Flower App (else `flwr run` refuses the run)."""

from __future__ import annotations

import dataclasses
import tomllib

from test_fl_contract import coordinator

from fedfhe_coordinator.flwr_cli import flower_app_dir, write_run_config


def test_every_written_key_is_declared_in_the_flower_apps_pyproject(tmp_path):
    cfg = dataclasses.replace(coordinator(tmp_path), supernode_public_keys=[])  # no key files to read here
    written = tomllib.loads(write_run_config(cfg, {}).read_text())
    declared = tomllib.loads((flower_app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(set(written) - set(declared)) == []
    assert declared["aggregation"] == cfg.training.aggregation == "auto"  # the app's default is the config's
