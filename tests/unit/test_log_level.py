"""--log-level on the three long-running services (issue 28): parsed the same way by each, applied to fedfhe's
own loggers and handed to the Flower processes a service starts (FLWR_LOG_LEVEL)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
from test_docs import _cli_reference  # the one loader of scripts/cli_reference.py

from fedfhe_common.runtime.config import from_dict
from fedfhe_common.runtime.logs import FLOWER_LEVEL_ENV, LOG_LEVELS, configure
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.superlink import launch as superlink

SERVICES = [("fedfhe-coordinator", "superlink", "coordinator.yaml"), ("fedfhe-owner", "supernode", "owner.yaml"),
            ("fedfhe-inference", "serve", "inference.yaml")]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as it was: configure() replaces its handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _parser(prog: str):
    return dict(_cli_reference().programs())[prog]


@pytest.mark.parametrize(("prog", "cmd", "config"), SERVICES)
def test_every_service_takes_log_level(prog, cmd, config):
    ap = _parser(prog)
    assert ap.parse_args([cmd, "--config", config]).log_level == "INFO"
    for level in LOG_LEVELS:
        assert ap.parse_args([cmd, "--config", config, "--log-level", level.lower()]).log_level == level
    with pytest.raises(SystemExit) as usage:
        ap.parse_args([cmd, "--config", config, "--log-level", "TRACE"])
    assert usage.value.code == 2


@pytest.mark.usefixtures("root_logging")
def test_the_level_drops_fedfhe_records_below_it(capsys):
    configure("json", "WARNING")
    assert logging.getLogger().level == logging.WARNING
    log = logging.getLogger("fedfhe_inference.server")
    log.info("not this one")
    log.warning("this one")
    err = capsys.readouterr().err
    assert "this one" in err and "not this one" not in err
    configure("text", "DEBUG")
    assert logging.getLogger("fedfhe_coordinator").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("root_logging")
def test_configure_names_a_wrong_level():
    with pytest.raises(ValueError, match="log level 'TRACE': expected one of DEBUG, INFO, WARNING, ERROR"):
        configure("text", "TRACE")


BASE = {
    "state_dir": "state", "release_key": "release.key", "training": {"output_dir": "out"}, "metrics_address": "",
    "superlink": {"certfile": "s.crt", "keyfile": "s.key", "ca_certfile": "ca.crt"},
}


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_superlink_hands_its_level_to_flower(monkeypatch, tmp_path, log_format):
    """Text logs exec flower-superlink, json relays it: both with FLWR_LOG_LEVEL set, whatever the environment had."""
    monkeypatch.setenv(FLOWER_LEVEL_ENV, "INFO")
    started: dict[str, dict[str, str]] = {}

    def execute(cmd: list[str], env: dict[str, str]) -> None:
        started["env"] = env
        raise SystemExit(0)  # exec never returns

    def relay(cmd: list[str], env: dict[str, str], source: str, *, json_lines: bool) -> int:
        started["env"] = env
        return 0

    monkeypatch.setattr(superlink, "exec_in_venv", execute)
    monkeypatch.setattr(superlink, "run_relayed", relay)  # launch imports it at module level
    cfg = from_dict(CoordinatorConfig, {**BASE, "state_dir": str(tmp_path / "state")})
    with pytest.raises(SystemExit) if log_format == "text" else contextlib.nullcontext():
        superlink.run_superlink(cfg, log_format, "ERROR")
    assert started["env"][FLOWER_LEVEL_ENV] == "ERROR"
