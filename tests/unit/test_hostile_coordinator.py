"""A hostile coordinator against real owners: it changes SecAgg+'s unmask request, and every owner refuses.

Issue 25. The federation is test_secure_metrics's: three owners' real ClientApps (fedfhe's privacy_mod and
Flower's secaggplus_mod) on their own digits rows, and the coordinator's real ``run_secure`` (Flower's
SecAggPlusWorkflow), joined by a grid that serialises every message as the SuperLink would. The hostile part
is the grid: it rewrites the unmask stage's active and dead lists on their way to the owners, as a
coordinator that controls its ServerApp or its SuperLink could. Every reply it gets back is recorded, so
the tests assert on what actually left each owner.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity
from test_secure_metrics import NODES, LocalGrid, federation

from fedfhe_coordinator.serverapp.rounds import NodesLost, OwnersChanged

VICTIM = NODES[-1]


class RewritingGrid(LocalGrid):
    """Delivers every message, except that ``rewrite`` may change an unmask request's lists first."""

    made: list[RewritingGrid] = []  # noqa: RUF012 - every grid made, so a test reads the one of a run that failed

    def __init__(self, owners) -> None:  # type: ignore[no-untyped-def]
        super().__init__(owners)
        RewritingGrid.made.append(self)

    def rewrite(self, server_round: int, active: list[int], dead: list[int]) -> tuple[list[int], list[int]]:
        return active, dead

    def push_messages(self, messages) -> list[str]:  # type: ignore[no-untyped-def]
        for m in messages:
            configs = m.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.UNMASK:
                active, dead = self.rewrite(int(m.metadata.group_id), list(configs[Key.ACTIVE_NODE_ID_LIST]),
                                            list(configs[Key.DEAD_NODE_ID_LIST]))
                configs[Key.ACTIVE_NODE_ID_LIST], configs[Key.DEAD_NODE_ID_LIST] = active, dead
        return super().push_messages(messages)


class VictimOnBothLists(RewritingGrid):
    """Flower 1.39's mod alone would hand out both of the victim's shares: its update, unmasked alone."""

    def rewrite(self, server_round, active, dead):  # type: ignore[no-untyped-def]
        return active, [*dead, VICTIM]


class VictimLeftOutOfRound2(RewritingGrid):
    """Round 2 summed without the victim: round 1's sum minus round 2's is the victim's update, give or take
    how much the model moved (and exactly, for the families that refit from scratch)."""

    def rewrite(self, server_round, active, dead):  # type: ignore[no-untyped-def]
        if server_round < 2:
            return active, dead
        return [n for n in active if n != VICTIM], sorted({*dead, VICTIM})


@pytest.fixture(autouse=True)
def _identity(monkeypatch):
    for name, value in (("_run_id", 7), ("_node_id", SUPERLINK_NODE_ID), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def run_refused(tmp_path, grid_class: type[RewritingGrid], min_owners: int = 3  # type: ignore[no-untyped-def]
                ) -> tuple[str, RewritingGrid]:
    """The run against ``grid_class``: it must fail; its message, and the grid with every reply received."""
    with pytest.raises(NodesLost) as err:
        federation(tmp_path, grid_class=grid_class, min_owners=min_owners)
    return str(err.value), RewritingGrid.made[-1]


def unmask_replies(grid: LocalGrid, server_round: int) -> list[Message]:
    """Every owner's answer to the unmask request of ``server_round`` (refusals included)."""
    return [m for m in grid.received if int(m.metadata.group_id) == server_round
            and (m.has_error() or Key.SHARE_LIST in m.content.config_records.get(RECORD_KEY_CONFIGS, {}))]


def shares_sent(replies: list[Message]) -> list[bytes]:
    return [s for m in replies if not m.has_error()
            for s in m.content.config_records[RECORD_KEY_CONFIGS][Key.SHARE_LIST]]


def test_the_victim_on_both_lists_every_owner_refuses_and_no_share_leaves(tmp_path):
    message, grid = run_refused(tmp_path, VictimOnBothLists)
    replies = unmask_replies(grid, 1)
    assert len(replies) == len(NODES) and all(m.has_error() for m in replies), replies
    assert all("listed as both active and dead" in m.error.reason for m in replies), [m.error.reason for m in replies]
    assert shares_sent(replies) == []  # no share of anyone, the victim's included, left an owner
    # The round fails naming each owner and its reason (the run's first line, as `train` prints it).
    assert message.startswith("round 1: secure aggregation stopped"), message
    assert all(f"owner-{i} (SecAgg+ unmask: InstructionRefused: SecAgg+ unmask: node(s) {VICTIM} listed as both "
               "active and dead" in message for i in range(len(NODES))), message


@pytest.mark.parametrize(("min_owners", "reason"), [
    (2, "is over other owners than this run's first secure sum (without 1 owner(s) of the first ({victim}))"),
    (3, "the sum would be over 2 owner(s); this owner takes part only in sums of at least 3 owners"),
], ids=["fixed-membership", "min-owners"])
def test_a_round_that_leaves_one_owner_out_is_refused_by_every_owner(tmp_path, min_owners, reason):
    """Owners who accept sums of two still refuse round 2: it is over other owners than round 1. The honest
    coordinator's reading of the same refusals (an owner lost mid-run): training ends with round 1's model."""
    reason = reason.format(victim=VICTIM)
    fed = federation(tmp_path, grid_class=VictimLeftOutOfRound2, min_owners=min_owners)
    grid = RewritingGrid.made[-1]
    first = unmask_replies(grid, 1)
    assert len(first) == len(NODES) and not any(m.has_error() for m in first)  # round 1 fixed the run's owners
    second = unmask_replies(grid, 2)
    assert len(second) == len(NODES) and all(reason in m.error.reason for m in second), \
        [m.error.reason for m in second]
    assert shares_sent(second) == []
    recorder = fed["recorder"]
    assert isinstance(recorder.stopped, OwnersChanged), recorder.stopped
    assert str(recorder.stopped).startswith("round 2: owners refused a sum over other owners than the run's"), \
        recorder.stopped
    assert "training ended after round 1" in str(recorder.stopped)
    assert reason in recorder.entry(2)["error"], recorder.entry(2)
    assert any(not np.array_equal(a, b) for a, b in zip(fed["final"], fed["initial"], strict=True))  # round 1's
