"""owner.yaml privacy.max_evaluations_per_run: an owner scores at most that many global models in one run.

Flower's real Context carries the count from one message to the next (the SuperNode keeps
``context.state`` per run); the message beyond the cap is refused before a row is read.
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from test_fl_contract import task_identity  # noqa: F401 - Flower's Message needs a task identity

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_owner.clientapp.client_app import evaluate, train
from fedfhe_owner.clientapp.run_ledger import count_evaluation


def owner_context(cap: int) -> Context:
    # No data-path: a handler that got past the cap would fail reading the owner's file instead.
    return Context(run_id=1, node_id=7, node_config={fc.NODE_MAX_EVALUATIONS: cap}, state=RecordDict(),
                   run_config={})


def message(kind: str) -> Message:
    content = RecordDict({fc.CONFIG: ConfigRecord({fc.MODEL: "LogisticRegression"})})
    return Message(content=content, dst_node_id=7, message_type=kind)


def test_the_count_lives_in_the_runs_context_and_stops_at_the_cap():
    context = owner_context(3)
    assert [count_evaluation(context) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(fc.InstructionRefused, match="at most 3 global models per run .*asked for number 4"):
        count_evaluation(context)
    assert count_evaluation(owner_context(3)) == 1  # a new run starts with an empty state


@pytest.mark.parametrize("handler,kind", [(train, MessageType.TRAIN), (evaluate, MessageType.EVALUATE)])
def test_a_message_beyond_the_cap_is_refused_before_any_row_is_read(handler, kind):
    context = owner_context(2)
    count_evaluation(context)
    count_evaluation(context)
    with pytest.raises(fc.InstructionRefused, match="privacy.max_evaluations_per_run"):
        handler(message(kind), context)


def test_an_owner_that_keeps_newton_terms_secure_refuses_them_in_plain_mode():
    context = owner_context(5)
    context.node_config[fc.NODE_PLAIN_NEWTON] = False
    msg = message(MessageType.TRAIN)
    msg.content[fc.CONFIG][fc.PHASE] = fc.PHASE_NEWTON
    with pytest.raises(fc.InstructionRefused, match="privacy.plain_newton"):
        train(msg, context)
    assert count_evaluation(context) == 1  # refused before anything was counted or read
