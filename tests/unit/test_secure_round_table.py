"""The secure round table (issue 13): who answered, who fell silent and who failed, per SecAgg+ stage.

SecAggPlusWorkflow keeps no per-owner account of a round; fedfhe's StageGrid records
each stage's messages and replies, and SecureRecorder turns that into the same
progress.jsonl rows as a plain run, and into the failure message of a halted round.
"""

from __future__ import annotations

from types import SimpleNamespace

from flwr.server.strategy import FedAvg

from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy
from fedfhe_coordinator.serverapp.secure_training import SecureRecorder, resolve_shares


def recorder(tmp_path, log):
    rec = SecureRecorder(tmp_path / "progress.jsonl", ReplyPolicy("LogisticRegression", resolve_schema("digits")),
                         {}, 10.0, inner=FedAvg(), min_nodes=2, max_weight=1000.0, threshold=2,
                         score=lambda params: {})
    rec.grid = SimpleNamespace(log=log)
    rec.owners = {1: "owner-0", 2: "owner-1", 3: "owner-2"}
    return rec


def stage(sent, ok, failed=None, gone=None):
    return {"sent": sent, "ok": ok, "failed": failed or {}, "gone": gone or {}}


def test_a_halted_round_names_the_silent_and_the_failed_owners(tmp_path):
    log = {1: {
        "setup": stage([1, 2, 3], [1, 2, 3]),
        "share_keys": stage([1, 2, 3], [1, 2, 3]),
        "collect_masked_vectors": stage([1, 2, 3], [1], failed={2: "ClientApp raised DataError: bad.csv"}),
    }}
    rec = recorder(tmp_path, log)
    message = rec.halted(1)
    assert message.startswith(
        "round 1: secure aggregation stopped: fewer owners left than its reconstruction threshold (2); "
        "no reply from owner-2; failed: owner-1 (SecAgg+ collect_masked_vectors: ClientApp raised DataError: bad.csv)")
    entry = rec.entry(1)
    assert entry["fit_owners"] == ["owner-0"]
    assert [(m["owner"], m["stage"], m["reason"]) for m in entry["missing"]] == [
        ("owner-2", "collect_masked_vectors", "no reply to SecAgg+ collect_masked_vectors within the round timeout")]


def test_an_owner_lost_after_its_masked_vector_still_counts(tmp_path):
    """Its mask is rebuilt from the others' shares: it trained, and is listed as silent in the unmask stage."""
    log = {2: {
        "setup": stage([1, 2, 3], [1, 2, 3]),
        "share_keys": stage([1, 2, 3], [1, 2, 3]),
        "collect_masked_vectors": stage([1, 2, 3], [1, 2, 3]),
        "unmask": stage([1, 2, 3], [1, 2], gone={3: "node unavailable"}),
    }}
    entry = recorder(tmp_path, log).note_stages(2)
    assert entry["fit_owners"] == ["owner-0", "owner-1", "owner-2"] and entry["fit_nodes"] == 3
    assert [(m["owner"], m["stage"], m["reason"]) for m in entry["missing"]] == [
        ("owner-2", "unmask", "node unavailable")]
    assert entry["failures"] == []


def test_shares_and_threshold_for_a_run():
    assert resolve_shares(0, 0, 3) == (1.0, 2)
    assert resolve_shares(0, 0, 10) == (1.0, 6)
    assert resolve_shares(5, 0, 10) == (5, 3)
    assert resolve_shares(0, 7, 10) == (1.0, 7)
