"""`train` holds Ctrl-C and SIGTERM while `flwr run` submits, so the run's id is known when it stops it."""

from __future__ import annotations

import os
import signal

import pytest

from fedfhe_common.runtime.errors import FedfheError, Terminated
from fedfhe_coordinator.train.training import _interrupts_held, _sigterm_interrupts


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Python's own SIGINT handler, as in an operator's terminal, whatever this process inherited (a
    pytest-xdist worker, a background job: SIGINT ignored); restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_during_submission_is_delivered_at_release(sig, raised):
    with _sigterm_interrupts(), _interrupts_held() as release:
        os.kill(os.getpid(), sig)  # delivered to this (main) thread before kill returns
        submitted = True  # the submission goes on: the run id would be known here
        with pytest.raises(raised):
            release()
    assert submitted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_submission_ended_by_the_same_ctrl_c_reports_the_interrupt():
    with pytest.raises(KeyboardInterrupt), _interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        raise FedfheError("flwr run failed: killed by SIGINT")


def test_without_a_signal_release_returns_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with _interrupts_held() as release:
        release()
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, a script's background job
    try:
        with _interrupts_held() as release:
            os.kill(os.getpid(), signal.SIGINT)
            release()  # nothing held, nothing raised
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
