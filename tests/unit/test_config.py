"""YAML config: unknown keys, wrong types, missing keys and files are errors naming the key."""

from __future__ import annotations

import pytest

from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator import config as coord


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


def test_every_problem_is_reported_at_once_with_ranges_and_addresses(tmp_path):
    bad = GOOD.replace("rounds: 4", "rounds: 0, min_nodes: -1, roundz: 2").replace(
        "ca_certfile: ca.crt}", "ca_certfile: ca.crt, fleet_address: not-an-address}")
    with pytest.raises(ConfigError) as info:
        coord.load(_write(tmp_path, bad))
    text = str(info.value)
    assert "4 problems: " in text
    for part in ("unknown key training.roundz", "training.rounds: must be >= 1, got 0",
                 "training.min_nodes: must be >= 1, got -1",
                 "superlink.fleet_address: expected host:port (e.g. 10.0.0.1:9092), got 'not-an-address'"):
        assert part in text, (part, text)


def test_owner_ranges_and_addresses(tmp_path):
    from fedfhe_owner import config as owner_config

    good = {"owner_id": "o", "superlink": "10.0.0.1:9092", "root_certificates": "ca.crt", "auth_key": "k",
            "data": "d.csv", "state_dir": "s"}

    def load(**extra):
        p = tmp_path / "owner.yaml"
        p.write_text("\n".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}"
                               for k, v in {**good, **extra}.items()))
        return owner_config.load(p)

    assert load().holdout_fraction == 0.2 and load(superlink="[::1]:9092").superlink == "[::1]:9092"
    with pytest.raises(ConfigError, match=r"holdout_fraction: must be >= 0 and < 1, got 1.5"):
        load(holdout_fraction=1.5)
    for address in ("not-an-address", "10.0.0.1:0", "10.0.0.1:99999", "::1:9092", ":9092"):
        with pytest.raises(ConfigError, match=r"superlink: expected host:port"):
            load(superlink=address)
    with pytest.raises(ConfigError, match=r"2 problems: .*holdout_fraction.*runtime_address"):
        load(holdout_fraction=-0.1, runtime_address="localhost")
