"""check-config on the three CLIs: the shipped examples validate, a bad file names every problem (exit 1),
the JSON Schema export matches what the loader accepts, and Ansible validates every config template with it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedfhe_common.runtime.procs import venv_bin
from fedfhe_coordinator import cli as server_cli
from fedfhe_inference import cli as inference_cli
from fedfhe_owner import cli as client_cli

ROOT = Path(server_cli.__file__).resolve().parents[2]  # the checkout: server/fedfhe_coordinator/cli.py
EXAMPLES = {
    "coordinator": (server_cli, ROOT / "server" / "coordinator.example.yaml"),
    "owner": (client_cli, ROOT / "client" / "owner.example.yaml"),
    "inference": (inference_cli, ROOT / "inference" / "inference.example.yaml"),
}
SCHEMA_EXAMPLE = ROOT / "common" / "schema.example.yaml"


@pytest.mark.parametrize("role", sorted(EXAMPLES))
def test_each_shipped_example_validates(role, capsys):
    cli, example = EXAMPLES[role]
    assert cli.main(["check-config", "--config", str(example), "--schema", str(SCHEMA_EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert f"{example}: ok" in out and f"{SCHEMA_EXAMPLE}: ok" in out


def test_examples_are_commented_and_the_docs_point_to_them():
    checkout = Path(__file__).resolve().parents[2]  # the docs beside this test (ROOT is the installed code's)
    docs = "\n".join(p.read_text() for p in [checkout / "README.md", *sorted((checkout / "docs").glob("*.md"))])
    for _, example in [*EXAMPLES.values(), (None, SCHEMA_EXAMPLE)]:
        text = example.read_text()
        assert sum(line.lstrip().startswith("#") or " # " in line for line in text.splitlines()) >= 5, example
        name = str(example.relative_to(ROOT))
        assert name in docs, f"README.md and docs/ do not point to {name}"


def test_a_bad_coordinator_file_names_every_problem_at_once(tmp_path, capsys):
    bad = tmp_path / "coordinator.yaml"
    bad.write_text(
        "state_dir: /tmp/x\nrelease_key: k\n"
        "superlink: {certfile: a, keyfile: b, ca_certfile: c, fleet_address: nope, control_port: 0}\n"
        "training: {output_dir: o, rounds: 0, bogus: 1}\n"
    )
    assert server_cli.main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    for needle in ("superlink.fleet_address: expected host:port", "superlink.control_port: must be >= 1",
                   "unknown key training.bogus", "training.rounds: must be >= 1",
                   "check-config: error: 4 problems in 1 file"):
        assert needle in err, err
    assert server_cli.main(["check-config", "--config", str(bad), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and len(doc["files"][0]["problems"]) == 4


def test_checks_beyond_the_keys_schema_and_family(tmp_path, capsys):
    coord = yaml.safe_load((ROOT / "server" / "coordinator.example.yaml").read_text())
    coord["training"]["model"] = "Ridge"  # a regressor on a classification schema
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(coord))
    assert server_cli.main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 1
    assert "training.model: model 'Ridge' does not fit schema 'digits'" in capsys.readouterr().err
    owner = yaml.safe_load((ROOT / "client" / "owner.example.yaml").read_text())
    owner["schema"] = str(tmp_path / "missing-schema.yaml")
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(owner))
    assert client_cli.main(["check-config", "--config", str(tmp_path / "o.yaml")]) == 1
    assert "schema: schema" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("name: s\nn_features: 0\nfeature_min: 1\nfeature_max: 0\nclasses: [1]\n")
    assert server_cli.main(["check-config", "--schema", str(tmp_path / "s.yaml")]) == 1
    assert "n_features must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("role", sorted(EXAMPLES))
def test_json_schema_export_accepts_the_example_and_refuses_what_the_loader_refuses(role, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    cli, example = EXAMPLES[role]
    assert cli.main(["check-config", "--json-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load(example.read_text())
    assert not list(validator.iter_errors(data)), [e.message for e in validator.iter_errors(data)]
    assert list(validator.iter_errors({**data, "no_such_key": 1})), "unknown keys must be refused"
    if role == "coordinator":
        bad = {**data, "training": {**data["training"], "rounds": 0}}
        assert list(validator.iter_errors(bad)), "rounds: 0 must be refused"
        bad = {**data, "superlink": {**data["superlink"], "fleet_address": "not-an-address"}}
        assert list(validator.iter_errors(bad)), "an address without a port must be refused"
    if role == "owner":
        assert list(validator.iter_errors({**data, "holdout_fraction": 1.5}))


def test_json_schema_of_the_dataset_schema(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    assert server_cli.main(["check-config", "--json-schema", "schema"]) == 0
    validator = jsonschema.Draft202012Validator(json.loads(capsys.readouterr().out))
    assert not list(validator.iter_errors(yaml.safe_load(SCHEMA_EXAMPLE.read_text())))
    assert list(validator.iter_errors({"name": "x", "n_features": 3, "feature_min": 0, "feature_max": 1,
                                       "task": "ranking"}))


TEMPLATE_TASK = re.compile(r"ansible\.builtin\.template:\n((?:    .*\n)+)")


def test_every_config_template_is_validated_with_check_config():
    """A bad coordinator.yaml / owner.yaml / inference.yaml fails the template task, not a 90 s wait_for."""
    seen = {}
    for tasks in (ROOT / "deploy" / "ansible" / "roles").glob("*/tasks/*.yml"):
        for body in TEMPLATE_TASK.findall(tasks.read_text()):
            src = re.search(r"src: (\S+)", body).group(1)
            if src.endswith(".yaml.j2"):
                seen[src] = re.search(r"validate: \"(.*)\"", body)
    assert set(seen) == {"coordinator.yaml.j2", "owner.yaml.j2", "inference.yaml.j2"}, seen
    for src, validate in seen.items():
        assert validate and re.fullmatch(r"\{\{ fedfhe_venv \}\}/bin/fedfhe-\w+ check-config --config %s",
                                         validate.group(1)), (src, validate)


def test_ansible_template_validate_refuses_a_bad_file(tmp_path):
    """The real template module with the validate line the roles use: the bad file is not installed."""
    src = tmp_path / "owner.yaml.j2"
    src.write_text((ROOT / "client" / "owner.example.yaml").read_text().replace("holdout_fraction: 0.2",
                                                                                "holdout_fraction: {{ h }}"))
    dest = tmp_path / "owner.yaml"
    run = [venv_bin("ansible"), "localhost", "-c", "local", "-i", "localhost,", "-e",
           f"ansible_python_interpreter={sys.executable}", "-m", "ansible.builtin.template",
           "-a", f"src={src} dest={dest} validate='{venv_bin('fedfhe-owner')} check-config --config %s'"]
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "a"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "a")}
    bad = subprocess.run([*run, "-e", "h=1.5"], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert bad.returncode != 0 and not dest.exists()
    assert "holdout_fraction: must be >= 0 and < 1, got 1.5" in bad.stdout + bad.stderr
    good = subprocess.run([*run, "-e", "h=0.25"], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "holdout_fraction: 0.25" in dest.read_text()


def test_a_key_given_twice_is_a_problem(tmp_path, capsys):
    """YAML keeps the later of two equal keys silently: check-config names both lines (found in an example)."""
    text = (ROOT / "client" / "owner.example.yaml").read_text() + "seed: 7\n"
    (tmp_path / "o.yaml").write_text(text)
    assert client_cli.main(["check-config", "--config", str(tmp_path / "o.yaml")]) == 1
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("seed:"))
    last = len(text.splitlines())
    assert f"o.yaml:{last}: duplicate key 'seed' (also on line {first}; the later one would win)" in \
        capsys.readouterr().err


def test_test_only_keys_stay_out_of_the_exported_json_schema_but_load(tmp_path, capsys):
    """Issue 28: test_hostile_reply in owner.yaml's JSON Schema offered every editor a hostile-reply switch."""
    from fedfhe_owner.config import OwnerConfig

    assert client_cli.main(["check-config", "--json-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert not [k for k in schema["properties"] if k.startswith("test_")], sorted(schema["properties"])
    assert "test_hostile_reply" in {f.name for f in dataclasses.fields(OwnerConfig)}
    owner = yaml.safe_load((ROOT / "client" / "owner.example.yaml").read_text())
    (tmp_path / "o.yaml").write_text(yaml.safe_dump({**owner, "test_hostile_reply": "nan"}))
    assert client_cli.main(["check-config", "--config", str(tmp_path / "o.yaml")]) == 0


def test_key_errors_and_whole_config_checks_are_reported_together(tmp_path, capsys):
    """Issue 28: the family and SecAgg+ checks ran only once every key error was fixed: two rounds of edits."""
    coord = yaml.safe_load((ROOT / "server" / "coordinator.example.yaml").read_text())
    coord["training"]["bogus"] = 1  # a key error
    coord["superlink"]["control_port"] = 0  # a key error in another section
    keys = ("unknown key training.bogus", "superlink.control_port: must be >= 1")
    family = {**coord, "training": {**coord["training"], "model": "Ridge"}}  # checked on the loaded config
    secure = {**coord, "training": {**coord["training"], "secure_aggregation": {"num_shares": 1}}}  # __post_init__
    for data, needle in ((family, "training.model: model 'Ridge' does not fit"),
                         (secure, "training.secure_aggregation.num_shares: must be 0")):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        assert server_cli.main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 1
        err = capsys.readouterr().err
        for text in (*keys, needle):
            assert err.count(text) == 1, err
