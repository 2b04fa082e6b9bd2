"""A model family that cannot learn the schema's task is refused before any process starts."""

from __future__ import annotations

import pytest

from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.train.training import preflight
from fedfhe_demo.__main__ import parse


def test_make_demo_refuses_a_regressor_on_digits_at_parse_time(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--model", "Ridge"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "model 'Ridge' does not fit schema 'digits' (task classification)" in err
    assert "LogisticRegression, LinearSVC, SGDClassifier" in err
    assert parse(["--model", "LinearSVC"]).model == "LinearSVC"


def test_train_refuses_a_regressor_before_registering_or_running(tmp_path):
    path = tmp_path / "coordinator.yaml"
    path.write_text("state_dir: s\nrelease_key: k\nsuperlink: {certfile: a, keyfile: b, ca_certfile: c}\n"
                    "training: {output_dir: out, model: Lasso, schema: digits}\n")
    with pytest.raises(ConfigError, match=r"'Lasso' does not fit schema 'digits' .*needs a classifier"):
        preflight(coord.load(path))
    path.write_text(path.read_text().replace("Lasso", "SGDClassifier"))
    preflight(coord.load(path))
