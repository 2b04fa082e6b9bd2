"""fedfhe's pre-imported ClientApp server (fedfhe_owner.clientapp.clientapp_server) and its door.

On the shared loopback federation (conftest.py): every message of an approved run
is served by a child forked from the owner's server, with exactly one thread
alive in the server at each fork, and a Flower App the owners did not approve is
still refused per message, inside such a child, before any of it is unpacked.
Beside it, one server started by hand: a door's arguments, descriptors and exit
code pass through a fork, and a server with a thread running (a BLAS pool)
declines to fork and the door runs the cold launcher instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedfhe_common.pki.app_approval import app_dir_digest
from fedfhe_common.runtime.procs import venv_bin, wait_until
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.train import flwr_cli
from fedfhe_coordinator.train.training import read_progress
from fedfhe_owner.clientapp.clientapp_server import FORKED
from fedfhe_owner.supernode.launch import write_clientapp_shim

pytestmark = pytest.mark.timeout(600)
OWNERS = ["owner-0", "owner-1", "owner-2"]
FORK_LINE = re.compile(re.escape(FORKED) + r" (\d+) \(threads at fork: (\d+)\)")


def _log(fed, owner: str) -> str:
    proc = next(p for p in fed["cluster"].procs if p.name == f"supernode-{owner}")
    return proc.log.read_text(errors="replace")


def test_every_message_of_an_approved_run_is_forked_with_one_thread(fed, first_run):
    _, rows = first_run
    assert [r["fit_nodes"] for r in rows] == [3] * len(rows), rows
    for owner in OWNERS:
        log = _log(fed, owner)
        forks = FORK_LINE.findall(log)
        assert len(forks) >= len(rows), f"{owner}: {len(forks)} forked ClientApps for {len(rows)} rounds"
        assert {threads for _, threads in forks} == {"1"}, forks
        assert len({server for server, _ in forks}) == 1, "one resident server per SuperNode"
        assert "ClientApp started cold" not in log


def test_an_unapproved_app_is_refused_inside_a_forked_child(fed, first_run, tmp_path):
    cfg = fed["cfg"]
    app = tmp_path / "app"
    shutil.copytree(flwr_cli.flower_app_dir(), app)
    (app / "fedfhe_unapproved").mkdir()
    (app / "fedfhe_unapproved" / "__init__.py").write_text("# one more member: another app digest\n")
    digest = app_dir_digest(app)
    before = {o: len(FORK_LINE.findall(_log(fed, o))) for o in OWNERS}
    run_config = flwr_cli.write_run_config(cfg, RunConfig.from_coordinator(cfg, {"num-server-rounds": 1}))
    res = subprocess.run(
        [venv_bin("flwr"), "run", str(app), flwr_cli.CONNECTION, "--stream", "--run-config", str(run_config)],
        env=flwr_cli.flwr_env(cfg), capture_output=True, text=True, timeout=300, check=False,
    )
    rows = read_progress(cfg.training.output_dir / "progress.jsonl")
    assert len(rows) == 1 and rows[0]["fit_nodes"] == 0, (rows, res.stdout[-2000:])
    reasons = {f["reason"].split(" refused the Flower App: ")[0]: f["reason"] for f in rows[0]["failures"]}
    for owner in OWNERS:
        assert f"Flower App {digest} is not approved here" in reasons[owner], reasons
        log = _log(fed, owner)
        assert len(FORK_LINE.findall(log)) > before[owner], f"{owner}: the refusal did not go through a fork"
        assert f"{owner} refused the Flower App" in log


def _start_server(state: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    sock = state / "clientapp-server" / "clientapp.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedfhe_owner.clientapp.clientapp_server", "--socket", str(sock),
         "--parent-pid", str(os.getpid())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_until(lambda: proc.poll() is None and sock.exists(), 120, "the ClientApp server to listen")
    return proc


def _door(state: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    door = state / "flower-bin" / "flwr-clientapp"
    return subprocess.run([str(door), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("blas_threads", ["1", "2"])
def test_door_through_the_server_and_refusal_to_fork_with_threads(tmp_path, blas_threads):
    state = tmp_path / "state"
    write_clientapp_shim(SimpleNamespace(state_dir=state), server=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": blas_threads}
    cold = _door(state, env, "--help")  # no server yet: the cold launcher, same answer
    assert cold.returncode == 0 and "usage: flwr-clientapp" in cold.stdout
    assert "ClientApp started cold" in cold.stderr
    server = _start_server(state, env)
    try:
        ok = _door(state, env, "--help")
        bad = _door(state, env, "--token", "t", "--no-such-flag")
    finally:
        server.terminate()
        _, server_err = server.communicate(timeout=30)
    assert ok.returncode == 0 and "usage: flwr-clientapp" in ok.stdout, ok  # the door's stdout reached the child
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr, bad  # exit code relayed
    if blas_threads == "1":
        assert FORK_LINE.search(ok.stderr).group(2) == "1", ok.stderr
        assert "started cold" not in ok.stderr + bad.stderr
    else:  # OpenBLAS started its pool at import: the server must not fork, the door runs cold
        assert not FORK_LINE.search(ok.stderr + bad.stderr)
        assert "forking could deadlock" in ok.stderr, ok.stderr
        assert "every message will start cold" in server_err, server_err

