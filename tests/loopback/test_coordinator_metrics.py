"""Observability of the coordinator and the data owner's service (issue 15), on the shared federation (``fed``).

`fedfhe-coordinator superlink` serves training progress on ``metrics_address`` (the cluster's config picks a
free loopback port): scraped before a real 1-round training, when its round is reported (from the round
callback, before `train` has recorded the run's end) and after it, each value checked against the round's
progress.jsonl row.
A SuperNode started with ``fedfhe-owner supernode --log-format json`` writes only JSON records, Flower's
lines included.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.pki.ca import supernode_keypair
from fedfhe_common.runtime.procs import venv_bin, wait_until
from fedfhe_coordinator.train.training import run_training

pytestmark = pytest.mark.timeout(300)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    """Every sample of the coordinator's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def state(samples: Samples) -> str:
    (current,) = [dict(k[1])["state"] for k, v in samples.items() if k[0] == "fedfhe_coordinator_run_state" and v]
    return current


def owners(row: dict[str, Any], key: str) -> int:
    return len({item["owner"] for item in row.get(key) or []})


def test_training_progress_is_scraped_during_and_after_a_run(fed):
    cfg = fed["cfg"]
    address = cfg.metrics_address
    before = scrape(address)
    during: list[tuple[dict[str, Any], Samples]] = []
    run_training(cfg, overrides={"num-server-rounds": 1}, on_round=lambda row: during.append((row, scrape(address))))
    after = scrape(address)

    assert [row["round"] for row, _ in during] == [1]
    row, first = during[0]
    assert state(first) == "running" and state(before) != "running"
    assert first[("fedfhe_coordinator_run_rounds", ())] == 1 and first[("fedfhe_coordinator_rounds_completed", ())] == 1
    assert state(after) == "completed"
    assert after[("fedfhe_coordinator_rounds_completed", ())] == 1
    done = ("fedfhe_coordinator_runs_total", (("outcome", "completed"),))
    assert after[done] == before.get(done, 0) + 1
    # the last round's values are the ones progress.jsonl holds for it
    assert after[("fedfhe_coordinator_last_round_owners", (("outcome", "answered"),))] == row["fit_nodes"] >= 3
    assert after[("fedfhe_coordinator_last_round_owners", (("outcome", "failed"),))] == owners(row, "failures")
    assert after[("fedfhe_coordinator_last_round_owners", (("outcome", "missing"),))] == owners(row, "missing")
    assert row["seconds"] > 0 and after[("fedfhe_coordinator_last_round_seconds", ())] == pytest.approx(row["seconds"])
    accuracy = after[("fedfhe_coordinator_last_round_accuracy", (("scored_on", "public_test"),))]
    assert accuracy == pytest.approx(row["server"]["accuracy"]) and accuracy > 0.8
    # no label carries an owner's name
    assert not [k for k in after if any("owner-" in v for _, v in k[1])]


def test_supernode_json_logs_wrap_flowers_lines(fed):
    """An unregistered SuperNode (turned away by the SuperLink) with --log-format json: every line a record."""
    c = fed["cluster"]
    supernode_keypair(c.pki, "json-logs")
    config = c.owner_config("json-logs", fed["data"] / "owner-0.npz")
    proc = c.start("supernode-json-logs", [venv_bin("fedfhe-owner"), "supernode", "--config", str(config),
                                           "--log-format", "json"])
    try:
        wait_until(lambda: proc.popen.poll() is not None, 60, "the unregistered SuperNode to be turned away")
    finally:
        c.stop(proc)
    assert proc.popen.returncode != 0  # Flower's exit code, passed on by the wrapper
    lines = [line for line in proc.log.read_text(errors="replace").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    ours = [r for r in records if r["logger"].startswith("fedfhe.")]
    assert any("rows fit schema digits" in r["message"] for r in ours)
    flower = [r for r in records if r.get("source") == "flower-supernode"]
    assert any("Failed to activate SuperNode" in r["message"] for r in flower), lines[-20:]
    assert {r["level"] for r in flower} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
