"""YAML config: unknown keys, wrong types, missing keys and files are errors naming the key."""

from __future__ import annotations

import pytest

from fedfhe_common.errors import ConfigError
from fedfhe_server import config as coord


def _write(tmp_path, text: str):
    p = tmp_path / "coordinator.yaml"
    p.write_text(text)
    return p


GOOD = """
state_dir: state
release_key: pki/release.key
superlink: {certfile: a.crt, keyfile: a.key, ca_certfile: ca.crt}
training: {output_dir: out, rounds: 4}
"""


def test_loads_and_resolves_relative_paths(tmp_path):
    cfg = coord.load(_write(tmp_path, GOOD))
    assert cfg.training.rounds == 4
    assert cfg.superlink.certfile == tmp_path / "a.crt"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key training\.roundz"):
        coord.load(_write(tmp_path, GOOD.replace("rounds: 4", "roundz: 4")))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.rounds: expected an integer, got 'four'"):
        coord.load(_write(tmp_path, GOOD.replace("rounds: 4", "rounds: four")))


def test_missing_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key superlink\.keyfile"):
        coord.load(_write(tmp_path, GOOD.replace("keyfile: a.key, ", "")))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml: file not found"):
        coord.load(tmp_path / "nothere.yaml")


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"coordinator\.yaml:\d+: invalid YAML"):
        coord.load(_write(tmp_path, "state_dir: [unclosed\n"))
