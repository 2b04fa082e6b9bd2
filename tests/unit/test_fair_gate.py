"""The FHE worker slots go to owners in turn (issue 24): one owner's queued rows cannot starve another's."""

from __future__ import annotations

import threading

import pytest

from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.fair import FairGate, SlotTimeout

pytestmark = pytest.mark.timeout(60)


def _queue(gate: FairGate, owner: str, order: list[str], done: threading.Event) -> threading.Thread:
    def row() -> None:
        with gate.slot(owner, timeout=30):
            order.append(owner)
            done.wait(30)  # hold the slot until the test lets this row finish

    t = threading.Thread(target=row, daemon=True)
    t.start()
    return t


def test_a_second_owner_waits_for_one_row_not_for_the_first_owners_backlog():
    gate = FairGate(1)
    order: list[str] = []
    releases = [threading.Event() for _ in range(12)]
    threads = [_queue(gate, "owner-0", order, releases[0])]  # owner-0 holds the only slot ...
    wait_until(lambda: order == ["owner-0"], 10, "owner-0's first row to run")
    for i in range(1, 9):  # ... and queues eight more rows
        threads.append(_queue(gate, "owner-0", order, releases[i]))
        wait_until(lambda i=i: gate.waiting("owner-0") == i, 10, "owner-0's rows to queue")
    threads.append(_queue(gate, "owner-1", order, releases[9]))  # then owner-1 asks for one row
    wait_until(lambda: gate.waiting("owner-1") == 1, 10, "owner-1's row to queue")
    releases[0].set()
    wait_until(lambda: len(order) == 2, 10, "the next row to start")
    assert order == ["owner-0", "owner-1"]  # first come, first served would run owner-0's eight rows first
    for e in releases:
        e.set()
    for t in threads:
        t.join(10)
    assert len(order) == 10 and gate.free == 1 and gate.waiting() == 0


def test_owners_alternate_while_both_have_rows_waiting():
    gate = FairGate(1)
    order: list[str] = []
    go = threading.Event()
    first = _queue(gate, "a", order, go)
    wait_until(lambda: order == ["a"], 10, "the first row")
    rest = []
    for n, owner in enumerate(("a", "a", "a", "b", "b", "b"), start=1):
        rest.append(_queue(gate, owner, order, go))
        wait_until(lambda n=n: gate.waiting() == n, 10, "rows to queue")
    go.set()
    for t in [first, *rest]:
        t.join(10)
    assert order == ["a", "b", "a", "b", "a", "b", "a"]  # "a" just had its turn: "b" goes next


def test_a_row_that_finds_no_slot_in_time_gives_up_and_leaves_the_queue():
    gate = FairGate(1)
    gate.acquire("busy")
    with pytest.raises(SlotTimeout):
        gate.acquire("late", timeout=0.05)
    assert gate.waiting() == 0
    gate.release()
    assert gate.free == 1
