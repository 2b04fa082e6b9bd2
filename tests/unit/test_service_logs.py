"""`--log-format json` of the three services and the coordinator's metrics config, in process (issue 15).

The relay (fedfhe_common.runtime.relay) runs here with stand-in children that behave like Flower on a signal:
``flower`` (its handler resets SIGTERM to the default, then takes a moment to shut down: a group-wide
SIGTERM must not reach it twice, one sent to the wrapper alone must be passed on), ``uvicorn`` (shuts
down, then re-raises the signal on itself: the wrapper must end the same way) and ``starting`` (no
handler yet: the signal is passed on all the same).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.runtime.config import from_dict
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.logs import wrap_line
from fedfhe_common.runtime.procs import wait_until
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.superlink.metrics import Metrics

FLOWER_LIKE = textwrap.dedent("""
    import signal, sys, time
    mode = sys.argv[1]
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as Flower's handler does: a second one kills
        print("INFO :      Got " + signal.Signals(signum).name + ", shutting down", file=sys.stderr, flush=True)
        time.sleep(1.5)
        if mode == "uvicorn":
            signal.raise_signal(signum)
        sys.exit(3)
    if mode != "starting":
        signal.signal(signal.SIGTERM, stop)
    print("\\x1b[32mINFO\\x1b[0m :      Starting Flower SuperNode", file=sys.stderr, flush=True)
    print("plain stdout line", flush=True)
    while True:
        time.sleep(0.05)
""")
WRAPPER = textwrap.dedent("""
    import sys
    from fedfhe_common.runtime.logs import configure
    from fedfhe_common.runtime.relay import exit_as, run_relayed
    configure("json")
    sys.exit(exit_as(run_relayed([sys.executable, "-c", sys.argv[1], sys.argv[2]], {}, "flower-supernode",
                                 json_lines=True)))
""")


def test_wrap_line_keeps_flowers_level_and_drops_colour():
    rec = json.loads(wrap_line("\x1b[32mWARNING\x1b[0m :   Connection lost\n", "flower-superlink", "stderr"))
    assert rec["level"] == "WARNING" and rec["message"] == "Connection lost" and rec["logger"] == "flwr"
    assert rec["source"] == "flower-superlink" and rec["stream"] == "stderr" and rec["time"].endswith("Z")
    plain = json.loads(wrap_line('Traceback "x"\n', "flower-supernode", "stderr"))
    assert plain["level"] == "WARNING" and plain["message"] == 'Traceback "x"' and plain["logger"] == "flower-supernode"
    # a record from a fedfhe process further down keeps its fields and gains the source
    inner = json.dumps({"time": "t", "level": "ERROR", "logger": "fedfhe.x", "message": "m"})
    assert json.loads(wrap_line(inner, "flower-supernode", "stderr")) == {**json.loads(inner),
                                                                            "source": "flower-supernode"}
    assert json.loads(wrap_line('{"not": "a record"}', "s", "stdout"))["message"] == '{"not": "a record"}'


def _wrapper(tmp_path: Path, mode: str = "flower") -> tuple[subprocess.Popen[str], Path, Path]:
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, FLOWER_LIKE, mode], stdout=o, stderr=e, text=True,
                                start_new_session=True)
    up = "handles SIGTERM" if mode != "starting" else "Starting Flower SuperNode"
    wait_until(lambda: up in err.read_text(), 30, "the child to start")
    return proc, out, err


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("group", [True, False], ids=["group-wide", "wrapper-only"])
def test_relay_wraps_every_line_and_delivers_one_sigterm(tmp_path, group):
    proc, out, err = _wrapper(tmp_path)
    started = time.monotonic()
    if group:  # a service manager's stop: the child gets it directly; a second copy would kill it (exit -15)
        os.killpg(proc.pid, signal.SIGTERM)
    else:  # only the wrapper: it passes the signal on
        os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 3, err.read_text()  # the child's own graceful exit code, passed on
    assert time.monotonic() - started > 1.4  # it had its shutdown time
    errs, outs = _records(err), _records(out)
    assert [r["message"] for r in errs if r.get("source") == "flower-supernode"] == [
        "Starting Flower SuperNode", "Got SIGTERM, shutting down"]
    assert [(r["message"], r["level"], r["stream"]) for r in outs] == [("plain stdout line", "INFO", "stdout")]
    ours = [r["message"] for r in errs if r["logger"] == "fedfhe.relay"]
    assert any("exited with 3" in m for m in ours)
    assert any("passing SIGTERM on" in m for m in ours) is (not group)


def test_relay_ends_as_its_child_did_and_passes_a_signal_on_before_flower_has_handlers(tmp_path):
    proc, _, err = _wrapper(tmp_path, "uvicorn")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM, err.read_text()  # killed by SIGTERM, as exec'd Flower would be
    assert any("exited with -15" in r["message"] for r in _records(err))
    proc, _, err = _wrapper(tmp_path, "starting")  # no handler: the default action, as a direct signal
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM, err.read_text()
    assert any("passing SIGTERM on" in r["message"] for r in _records(err))


BASE = {
    "state_dir": "state", "release_key": "release.key", "training": {"output_dir": "out"},
    "superlink": {"certfile": "s.crt", "keyfile": "s.key", "ca_certfile": "ca.crt"},
}


def test_metrics_address_is_checked_and_localhost_by_default():
    assert from_dict(CoordinatorConfig, BASE).metrics_address == "127.0.0.1:9465"
    assert from_dict(CoordinatorConfig, {**BASE, "metrics_address": ""}).metrics_address == ""
    with pytest.raises(ConfigError, match="metrics_address: expected host:port"):
        from_dict(CoordinatorConfig, {**BASE, "metrics_address": "localhost"})


def test_metrics_read_progress_and_runs_at_scrape_time(tmp_path):
    cfg = from_dict(CoordinatorConfig, {**BASE, "state_dir": str(tmp_path / "state"),
                                        "training": {"output_dir": str(tmp_path / "out")}})
    metrics = Metrics(cfg)

    def samples() -> dict:
        from prometheus_client import generate_latest

        text = generate_latest(metrics.registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    idle = samples()
    assert idle[("fedfhe_coordinator_run_state", (("state", "idle"),))] == 1
    assert idle[("fedfhe_coordinator_rounds_completed", ())] == 0
    (tmp_path / "state").mkdir()
    (tmp_path / "out").mkdir()
    runs = tmp_path / "state" / "runs.jsonl"
    runs.write_text('{"run_id": "7", "event": "submitted", "rounds": 3}\n')
    row = {"round": 1, "fit_nodes": 2, "seconds": 4.5, "server": {"accuracy": 0.91}, "clients": {"accuracy": 0.9},
           "failures": [{"owner": "b", "phase": "fit"}, {"owner": "b", "phase": "eval"}],
           "missing": [{"owner": "c", "phase": "fit"}]}
    (tmp_path / "out" / "progress.jsonl").write_text(json.dumps(row) + "\n" + '{"round": 2, "torn')
    running = samples()
    assert running[("fedfhe_coordinator_run_state", (("state", "running"),))] == 1
    assert running[("fedfhe_coordinator_run_rounds", ())] == 3
    assert running[("fedfhe_coordinator_rounds_completed", ())] == 1  # the torn line is not a round
    assert running[("fedfhe_coordinator_last_round_owners", (("outcome", "answered"),))] == 2
    assert running[("fedfhe_coordinator_last_round_owners", (("outcome", "failed"),))] == 1  # b once
    assert running[("fedfhe_coordinator_last_round_owners", (("outcome", "missing"),))] == 1
    assert running[("fedfhe_coordinator_last_round_seconds", ())] == 4.5
    assert running[("fedfhe_coordinator_last_round_accuracy", (("scored_on", "public_test"),))] == 0.91
    assert running[("fedfhe_coordinator_last_round_accuracy", (("scored_on", "owners"),))] == 0.9
    with runs.open("a") as fh:
        fh.write('{"run_id": "7", "event": "failed"}\n{"run_id": "8", "event": "submitted", "rounds": 1}\n'
                 '{"run_id": "8", "event": "completed"}\n')
    ended = samples()
    assert ended[("fedfhe_coordinator_run_state", (("state", "completed"),))] == 1
    assert ended[("fedfhe_coordinator_runs_total", (("outcome", "failed"),))] == 1
    assert ended[("fedfhe_coordinator_runs_total", (("outcome", "completed"),))] == 1
    assert ended[("fedfhe_coordinator_runs_total", (("outcome", "interrupted"),))] == 0
