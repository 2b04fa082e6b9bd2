"""The per-owner budget of refused calls (fedfhe_inference.refusals): a burst, a refill rate, owners apart."""

from __future__ import annotations

import pytest

from fedfhe_common.runtime.errors import ConfigError
from fedfhe_inference.config import Limits
from fedfhe_inference.refusals import RefusalBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_burst_then_the_rate_per_owner():
    clock = Clock()
    budget = RefusalBudget(per_second=2.0, burst=3, clock=clock)
    assert [budget.spend("alice") for _ in range(3)] == [False, False, True]  # the last token: say so once
    assert budget.wait_s("alice") == pytest.approx(0.5)
    assert budget.wait_s("bob") == 0.0  # another owner's budget is untouched
    clock.now += 0.5
    assert budget.wait_s("alice") == 0.0
    assert budget.spend("alice") is True and budget.wait_s("alice") == pytest.approx(0.5)
    clock.now += 60
    assert budget.wait_s("alice") == 0.0 and budget.spend("alice") is False  # refilled to the burst, no more


def test_a_refill_rate_below_one_a_second_is_refused():
    with pytest.raises(ConfigError, match="refusals_per_owner_per_s"):
        Limits(refusals_per_owner_per_s=0.5)
