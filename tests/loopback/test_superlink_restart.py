"""The SuperLink crashes (SIGKILL) in the middle of a run and is restarted on its state database.

What Flower 1.39 keeps in ``--database`` (SQLite): SuperNode registrations
(public key -> node id), runs with their status, messages and stored objects,
FABs. What it does not do: resume a run whose ServerApp died with it. So:
the interrupted `train` fails at once with a clear message; after the restart
the registrations are still there, the SuperNodes reconnect by themselves, the
interrupted run is marked failed, and the next `train` succeeds without
registering anyone again.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from reliability_helpers import Background, digits_federation

from fedfhe_common.runtime.errors import FedfheError
from fedfhe_common.runtime.procs import venv_bin, wait_until
from fedfhe_coordinator.train import flwr_cli, training
from fedfhe_coordinator.train.training import run_training

# slow: the module's crashed SuperLink takes 74 s to set up (`make test`, 2026-12-07)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
OWNERS = ["owner-0", "owner-1"]


def runs(cfg) -> dict[str, str]:
    """`flwr ls`: run id -> status, as the restarted SuperLink reports them."""
    res = subprocess.run([venv_bin("flwr"), "ls", flwr_cli.CONNECTION, "--format", "json"],
                         env=flwr_cli.flwr_env(cfg), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return {r["run-id"]: r["status"] for r in json.loads(res.stdout)["runs"]}


def registered(cfg) -> dict[str, str]:
    return {n["node-id"]: n["status"] for n in flwr_cli.registered_keys(cfg)}


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    with digits_federation(tmp_path_factory.mktemp("restart"), OWNERS, rounds=1, min_nodes=2, round_timeout_s=25.0,
                           wait_for_nodes_s=60.0) as f:
        yield {**f, "nodes": list(f["nodes"].values())}


@pytest.fixture(scope="module")
def crash(fed):
    """One good run; a second one during which the SuperLink is SIGKILLed in round 2; a restart."""
    c, cfg = fed["cluster"], fed["cfg"]
    run_training(cfg)
    before = {"registered": registered(cfg), "runs": runs(cfg)}
    log = cfg.state_dir / "flwr-run.log"
    run = Background(lambda: run_training(cfg, {"num-server-rounds": 3}))
    wait_until(lambda: run.done() or log.exists() and "[ROUND 2/" in log.read_text(errors="replace"), 180,
               "round 2 of the run to start")
    assert not run.done(), "the run ended before the SuperLink could be killed"
    c.stop(fed["superlink"], signal.SIGKILL)
    try:
        run.result(120)
        error = None
    except FedfheError as exc:
        error = exc
    fed["superlink"] = c.start_superlink(fed["cfg_path"])
    after = {"registered": registered(cfg), "runs": runs(cfg)}
    new_runs = [r for r in after["runs"] if r not in before["runs"]]
    return {"before": before, "after": after, "error": error, "interrupted": new_runs}


def test_interrupted_train_fails_at_once_with_a_clear_message(crash):
    assert crash["error"] is not None, "a run whose SuperLink died cannot have produced an artifact"
    first = str(crash["error"]).splitlines()[0]
    assert first.startswith("training failed: Connection to the SuperLink is unavailable"), str(crash["error"])


def test_registrations_and_runs_survive_the_restart(crash):
    before, after = crash["before"], crash["after"]
    assert set(after["registered"]) == set(before["registered"]), "node ids are kept with their keys"
    for run_id, status in before["runs"].items():
        assert after["runs"][run_id] == status == "finished:completed"
    assert len(crash["interrupted"]) == 1, after["runs"]


def test_next_run_succeeds_without_registering_again(fed, crash, monkeypatch):
    # run_training registers the configured keys (idempotently) before each run; skip that here, so the
    # run can only succeed on the registrations the SuperLink kept in its database.
    monkeypatch.setattr(training.flwr_cli, "register_supernodes", lambda *_args, **_kwargs: [])
    rows: list[dict] = []
    artifact = run_training(fed["cfg"], {"num-server-rounds": 1}, on_round=rows.append)
    assert rows[0]["fit_owners"] == OWNERS and rows[0]["missing"] == [] and rows[0]["failures"] == []
    assert artifact.metrics["rounds"] == 1
    assert all(p.popen.poll() is None for p in fed["nodes"]), "SuperNodes reconnect without a restart"


def test_interrupted_run_is_marked_failed_not_resumed(fed, crash):
    (interrupted,) = crash["interrupted"]

    def status() -> str:
        return runs(fed["cfg"])[interrupted]

    wait_until(lambda: status().startswith("finished"), 120, "the interrupted run to be closed", interval=5)
    assert status() == "finished:failed"
