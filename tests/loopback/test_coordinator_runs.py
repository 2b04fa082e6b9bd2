"""`fedfhe-coordinator train` as an operator runs it, on the shared federation (``fed``: three good owners and
owner-bad, whose file does not fit the schema): Flower's run id and status, the JSON summary and the run
report, the round table on stdout with owner-bad's reason, `runs`, the registration state read from the
SuperLink, and Ctrl-C or SIGTERM stopping the Flower run itself. Also `predict --format json` on the shared node."""

from __future__ import annotations

import json
import signal
import subprocess

import inference_support as support
import pytest

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml.data import save_csv
from fedfhe_common.runtime.procs import venv_bin, wait_until
from fedfhe_coordinator.train import flwr_cli

pytestmark = pytest.mark.timeout(600)


def server(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("fedfhe-coordinator"), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def trained(fed):
    res = server("train", "--config", str(fed["cfg_path"]), "--rounds", "1", "--format", "json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads(res.stdout), res.stderr


def test_train_json_names_the_flower_run_and_writes_the_report(fed, trained):
    summary, stderr = trained
    run_id = summary["run_id"]
    assert run_id.isdigit() and summary["status"] == "finished:completed" and summary["rounds"] == 1
    (row,) = summary["per_round"]
    assert row["owners"] == ["owner-0", "owner-1", "owner-2"]
    # owner-bad fails each phase of the round (fit, evaluate), each time naming its file
    assert {f["owner"] for f in row["failures"]} == {"owner-bad"}
    assert all("bad.csv" in f["reason"] for f in row["failures"]), row["failures"]
    out = fed["cfg"].training.output_dir
    assert json.loads((out / "report.json").read_text())["run_id"] == run_id
    md = (out / "report.md").read_text()
    assert f"Flower run {run_id}" in md and "owner-bad: " in md
    assert summary["report"]["json"] == str(out / "report.json")
    # with --format json the round table goes to stderr, stdout being the JSON document alone
    assert "round 1/1: clients 3 (1 failed)" in stderr and "owner-bad: " in stderr
    # Flower's own record of the run agrees
    (flower,) = flwr_cli.list_runs(fed["cfg"], int(run_id))
    assert flower["status"] == "finished:completed"


def test_runs_lists_the_run_with_its_status_and_artifact(fed, trained):
    summary, _ = trained
    res = server("runs", "--config", str(fed["cfg_path"]), "--format", "json", timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {r["run_id"]: r for r in json.loads(res.stdout)["runs"]}
    mine = rows[summary["run_id"]]
    assert mine["status"] == "finished:completed" and mine["fedfhe"]["artifact"] == summary["artifact"]
    assert mine["fedfhe"]["model"] == "LogisticRegression" and mine["fedfhe"]["rounds"] == 1


def test_registration_state_comes_from_the_superlink(fed):
    res = server("register", "--config", str(fed["cfg_path"]), "--plan", "--format", "json", timeout=120)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["in_sync"] and plan["to_register"] == [] and plan["to_unregister"] == []
    # `flwr supernode list --format json`: the four registered owners' nodes (intruder and no-ca never were)
    assert len([n for n in plan["nodes"] if n["status"] in ("registered", "online", "offline")]) == 4, plan


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_flower_run(fed, trained, sig, code):
    cfg = fed["cfg"]
    before = {r["run-id"] for r in flwr_cli.list_runs(cfg)}
    # As from a terminal: a shell script's background job (how a CI may start the suite) inherits SIGINT
    # ignored, and Python then leaves Ctrl-C ignored too.
    proc = subprocess.Popen([venv_bin("fedfhe-coordinator"), "train", "--config", str(fed["cfg_path"]),
                             "--rounds", "5"], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def new_running() -> list[dict]:
            return [r for r in flwr_cli.list_runs(cfg) if r["run-id"] not in before and r["status"] == "running"]

        wait_until(lambda: proc.poll() is not None or new_running(), 180, "the new run to be running", interval=1)
        assert proc.poll() is None, proc.communicate()
        (run,) = new_running()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert f"stopping Flower run {run['run-id']} (flwr stop)" in err and "Traceback" not in err
    wait_until(lambda: flwr_cli.run_status(cfg, int(run["run-id"]))["status"].startswith("finished"), 60,
               "flwr ls to report the run finished", interval=1)
    assert flwr_cli.run_status(cfg, int(run["run-id"]))["status"] == "finished:stopped"


def test_predict_json_summary(node, alice, digits, tmp_path):
    owner_yaml = support.write_owner_yaml(tmp_path / "owner.yaml", "alice", alice.endpoint, alice.state_dir,
                                          digits.train_csv, inference={"model_id": "digits-lr"})
    rows = tmp_path / "rows.csv"
    save_csv(rows, digits.X_test[:12], digits.y_test[:12], DIGITS)
    res = subprocess.run([venv_bin("fedfhe-owner"), "predict", "--config", str(owner_yaml), "--input",
                          str(rows), "--out", str(tmp_path / "p.csv"), "--model-version", "1", "--format",
                          "json", "--no-progress"], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["model_id"] == "digits-lr" and doc["version"] == "1" and doc["rows"] == 12
    assert not doc["keys_uploaded"] and doc["key_id"] == alice.key_ids["1"] and doc["accuracy"] > 0.7
    assert doc["out"] == str(tmp_path / "p.csv") and doc["latency_per_row_s"] > 0
