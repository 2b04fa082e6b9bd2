"""fedfhe-coordinator tune: GridSearchCV x n_bits, each candidate scored clear, simulated and timed in real FHE;
the frontier and the pick (the fastest within tolerance of the best simulated score)."""

from __future__ import annotations

import json

from fedfhe_coordinator import cli as server_cli
from fedfhe_coordinator.fhe.tune import Candidate, mark_frontier, pick


def cand(sim: float, ms: float, bits: int = 8) -> Candidate:
    return Candidate({"C": 1.0}, bits, 0.9, 0.95, sim, ms, 0.1, 1.0)


def test_frontier_and_pick():
    slow_best, fast_ok, fast_bad, dominated = cand(0.95, 30.0), cand(0.948, 10.0), cand(0.80, 5.0), cand(0.94, 20.0)
    cands = [slow_best, fast_ok, fast_bad, dominated]
    mark_frontier(cands)
    assert [c.frontier for c in cands] == [True, True, True, False]
    assert pick(cands, tolerance_points=0.5) is fast_ok  # 0.2 points below the best, 3x faster
    assert pick(cands, tolerance_points=0.1) is slow_best
    assert pick(cands, tolerance_points=20) is fast_bad
    assert pick([], 0.5) is None


def test_tune_command_json(digits, tmp_path, capsys):
    out = tmp_path / "tune.json"
    argv = ["tune", "--data", str(digits.train_csv), "--eval", str(digits.test_csv), "--grid", '{"C": [0.05, 1.0]}',
            "--n-bits", "3,8", "--cv", "2", "--latency-rows", "1", "--json", str(out), "--format", "json"]
    assert server_cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    cands = doc["candidates"]
    assert sorted((c["params"]["C"], c["n_bits"]) for c in cands) == [(0.05, 3), (0.05, 8), (1.0, 3), (1.0, 8)]
    assert all(c["fhe_ms_per_row"] > 0 and 0 <= c["simulated"] <= 1 and 0 < c["cv_score"] <= 1 for c in cands)
    # 3 bits loses accuracy against 8 on digits: the pick is within 0.5 points of the best simulated score
    best = max(c["simulated"] for c in cands)
    assert doc["chosen"] in doc["frontier"] and (best - doc["chosen"]["simulated"]) * 100 <= 0.5
    assert min(c["simulated"] for c in cands if c["n_bits"] == 3) < best


def test_tune_refuses_a_parameter_the_family_lacks(digits, capsys):
    argv = ["tune", "--data", str(digits.train_csv), "--eval", str(digits.test_csv), "--grid", '{"depth": [1]}']
    assert server_cli.main(argv) == 1
    assert "--grid: depth not a parameter of LogisticRegression" in capsys.readouterr().err
