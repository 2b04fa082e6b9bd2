"""The ServerApp's bookkeeping of lost nodes, without processes: who is missing, when the run stops.

The federation tests (test_federation_faults.py) show the same with real
processes; these pin the cases that are slow or racy to provoke there: a node
that drops between FedAvg's two looks at the node list, a wait that must end.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Error
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedfhe_common.contracts.fl_contract import owner_key_id
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models
from fedfhe_coordinator.serverapp.rounds import BoundedGrid, NodesLost, RecordingFedAvg, ReplyPolicy

SCHEMA = resolve_schema("digits")
REGISTERED = (1, 2, 3, 11, 12, 13)  # nodes whose public key the coordinator registered as owner-<id>

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages take run and node ids from the running task; set what flwr-serverapp would."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FakeGrid:
    """Node lists in turn (the last one repeats); push assigns message ids as the real grid does."""

    def __init__(self, *node_lists: list[int]) -> None:
        self.lists = list(node_lists)
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]

    def get_nodes(self) -> list:
        return [SimpleNamespace(node_id=n, public_key=f"key-{n}".encode(), name="") for n in self.lists[0]]

    def push(self, messages: list[Message]) -> list[Message]:
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        return messages


def ok_reply(msg: Message, owner: str = "") -> Message:
    """A reply that keeps the contract; ``owner`` is what it claims, which the ServerApp ignores."""
    content = RecordDict({
        "arrays": to_arrays(models.initial_parameters("LogisticRegression", SCHEMA)),
        "metrics": MetricRecord({"num-examples": 10, "fit-seconds": 0.1, "eval-examples": 2, "eval-seconds": 0.1,
                                 "eval-accuracy": 0.5, "eval-loss": 1.0}),
    })
    return Message(content, reply_to=msg)


def error_reply(msg: Message, code: int, reason: str) -> Message:
    reply = Message(Error(code, reason), reply_to=msg)
    if code == ErrorCode.NODE_UNAVAILABLE:  # the SuperLink answers for the node
        reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    return reply


def strategy(tmp_path, min_nodes: int = 2, node_wait: float = 0.3) -> RecordingFedAvg:
    keys = {owner_key_id(f"key-{n}".encode()): f"owner-{n}" for n in REGISTERED}
    return RecordingFedAvg(tmp_path / "progress.jsonl", ReplyPolicy("LogisticRegression", SCHEMA), owner_keys=keys,
                           node_wait=node_wait, fraction_train=1.0, fraction_evaluate=0.0,
                           min_train_nodes=min_nodes, min_available_nodes=min_nodes)


def send(s: RecordingFedAvg, grid: FakeGrid, server_round: int) -> list[Message]:
    """Each round's own global model: the coordinator never sends one twice (test_replay_refusal.py)."""
    coef, intercept = models.initial_parameters("LogisticRegression", SCHEMA)
    arrays = to_arrays([coef + 0.01 * server_round, intercept])
    return grid.push(s.configure_train(server_round, arrays, ConfigRecord({}), grid))


def rows(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]


def test_bounded_grid_gives_up_with_the_names_of_lost_owners():
    grid = BoundedGrid(FakeGrid([1]), minimum=2, timeout=0.2, describe=lambda nodes: " (not connected: owner-b)")
    with pytest.raises(NodesLost, match=r"only 1 SuperNode\(s\) connected after waiting 0s, the run needs 2 "
                                        r"\(not connected: owner-b\); restart"):
        while True:  # what Flower's sample_nodes does, with a sleep of 1 s
            grid.get_node_ids()


def test_bounded_grid_keeps_one_node_list_for_the_whole_sampling():
    inner = FakeGrid([1, 2, 3], [1, 2])  # node 3 drops between FedAvg's two calls
    grid = BoundedGrid(inner, minimum=2, timeout=5)
    assert grid.get_node_ids() == [1, 2, 3]
    assert grid.get_node_ids() == [1, 2, 3]
    assert inner.calls == 1


def test_node_dropping_during_sampling_does_not_hang(tmp_path):
    """Without the stable list, FedAvg would size the sample at 3 and wait forever for a third node."""
    s = strategy(tmp_path)
    sent = send(s, FakeGrid([1, 2, 3], [1, 2]), 1)
    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 2, 3]


def test_too_few_nodes_before_a_round_fails_after_node_wait(tmp_path):
    s = strategy(tmp_path, min_nodes=3)
    s.owners = {1: "owner-a", 2: "owner-b", 3: "owner-c"}
    with pytest.raises(NodesLost, match=r"needs 3 \(not connected: owner-c\)"):
        send(s, FakeGrid([1, 2]), 2)


def test_missing_and_failed_nodes_are_named(tmp_path):
    s = strategy(tmp_path)
    grid = FakeGrid([11, 12, 13, 14])
    sent = {m.metadata.dst_node_id: m for m in send(s, grid, 1)}
    s.aggregate_train(1, [ok_reply(sent[n], f"owner-{n}") for n in (11, 12, 13)]
                      + [error_reply(sent[14], ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "bad.csv: 2 columns")])
    sent = {m.metadata.dst_node_id: m for m in send(s, grid, 2)}
    replies = [ok_reply(sent[11], "owner-11"), ok_reply(sent[12], "owner-12"),
               error_reply(sent[13], ErrorCode.NODE_UNAVAILABLE, "Node Unavailable")]  # 14: no reply at all
    s.aggregate_train(2, replies)
    s.flush(2)
    r1, r2 = rows(tmp_path)
    assert r1["missing"] == [] and r1["failures"] == [
        {"phase": "fit", "node_id": 14, "owner": "node-14", "reason": "bad.csv: 2 columns"}]
    assert r2["fit_owners"] == ["owner-11", "owner-12"]
    assert r2["missing"] == [
        {"phase": "fit", "node_id": 13, "owner": "owner-13", "reason": "Node Unavailable"},
        {"phase": "fit", "node_id": 14, "owner": "node-14", "reason": "no reply within the round timeout"},
    ]
    assert r2["failures"] == []


def test_round_below_minimum_stops_the_run_naming_who_is_missing(tmp_path):
    s = strategy(tmp_path, min_nodes=3)
    grid = FakeGrid([1, 2, 3])
    sent = {m.metadata.dst_node_id: m for m in send(s, grid, 1)}
    s.aggregate_train(1, [ok_reply(sent[n], f"owner-{n}") for n in (1, 2, 3)])
    sent = {m.metadata.dst_node_id: m for m in send(s, grid, 2)}
    with pytest.raises(NodesLost) as err:
        s.aggregate_train(2, [ok_reply(sent[1], "owner-1"),
                              error_reply(sent[2], ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "disk full")])
    assert str(err.value) == (f"round 2: 1 SuperNode(s) trained, the run needs 3; no reply from owner-3; "
                              f"failed: owner-2 (disk full) (see {tmp_path / 'progress.jsonl'})")
    last = rows(tmp_path)[-1]
    assert last["round"] == 2 and last["error"] == str(err.value)


def test_an_owner_reason_with_newlines_and_escape_codes_shows_escaped_on_one_line(tmp_path):
    """Issue 24: an owner chooses its error text; it must not forge round lines or drive the operator's terminal."""
    from fedfhe_coordinator.train.progress import RoundTable
    from fedfhe_coordinator.train.report import markdown, training_report

    forged = "bad.csv\nround 2 | 0.99 | owner-12 ok\x1b[2J\x1b]0;pwned\x07\u202eevil"
    s = strategy(tmp_path)
    sent = {m.metadata.dst_node_id: m for m in send(s, FakeGrid([11, 12, 13]), 1)}
    s.aggregate_train(1, [ok_reply(sent[11]), ok_reply(sent[12]),
                          error_reply(sent[13], ErrorCode.CLIENT_APP_RAISED_EXCEPTION, forged)])
    s.flush(1)
    (row,) = rows(tmp_path)
    reason = row["failures"][0]["reason"]
    assert reason == "bad.csv\\nround 2 | 0.99 | owner-12 ok\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil"
    line = RoundTable(1).line(row | {"server": {"accuracy": 0.9, "loss": 0.1}, "seconds": 1.0})
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line and "owner-13: bad.csv\\n" in line
    # Rows written before this change (raw text in progress.jsonl) are escaped when shown, too.
    raw = {"round": 1, "failures": [{"owner": "owner-13\x1b[31m", "reason": forged}], "missing": []}
    assert "\x1b" not in RoundTable(1).line(raw) and "\n" not in RoundTable(1).line(raw)
    artifact = SimpleNamespace(schema=SCHEMA, family="LogisticRegression", metrics={"rounds": 1, "per_round": [raw]})
    text = markdown(training_report(artifact, run_id=1, status="finished", owners=[], seconds=1.0), plot=False)
    assert "\x1b" not in text and "owner-13\\x1b[31m" in text


def test_waiting_for_nodes_names_the_registered_owners_that_never_connected():
    """Issue 28: "0 SuperNode(s) connected" alone left the operator to find out which owners were offline."""
    from fedfhe_coordinator.serverapp.rounds import wait_for_nodes

    keys = {owner_key_id(f"key-{n}".encode()): f"owner-{n}" for n in (1, 2, 3)}
    with pytest.raises(RuntimeError, match=r"only 1 SuperNode\(s\) connected after -1s, the run needs 2 "
                                           r"\(not connected: owner-2, owner-3, of the 3 registered owners\); check"):
        wait_for_nodes(FakeGrid([1]), 2, -1.0, keys)
    with pytest.raises(RuntimeError, match=r"only 0 SuperNode\(s\) connected after -1s, the run needs 2 "
                                           r"\(not connected: owner-1, owner-2, owner-3,"):
        wait_for_nodes(FakeGrid([]), 2, -1.0, keys)
