"""A message whose run stops while the SuperNode receives it must not make the node answer one message late.

Flower's real NodeState, ObjectStore and loop functions; only the SuperLink's side (receive, send) is a
function here. The first test shows Flower 1.39 alone returning after pushing the stopped run's reply.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import Status
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run, RunNotRunningException, RunStatus
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode import start_client_internal as loop
from flwr.supernode.nodestate import NodeStateFactory

from fedfhe_owner.supernode import flower_supernode

STOPPED, CURRENT = 77, 78


@pytest.fixture(autouse=True)
def _identity(monkeypatch):
    for name, value in (("_run_id", STOPPED), ("_node_id", 1), ("_task_id", 9)):
        monkeypatch.setattr(TaskIdentity, name, value)
    flower_supernode.AWAITED.clear()


def _node() -> tuple:
    factory = NodeStateFactory(ObjectStoreFactory())
    state, store = factory.state(), factory.objectstore_factory.store()
    state.set_node_id(5)
    for run_id in (STOPPED, CURRENT):
        run = Run.create_empty(run_id)
        run.status = RunStatus(Status.RUNNING, "", "")
        state.store_run(run)
    return state, store


def _message(run_id: int, value: float) -> Message:
    TaskIdentity.run_id = run_id
    content = RecordDict({"arrays": ArrayRecord([np.full(8, value)]), "config": ConfigRecord({"round": 1})})
    msg = Message(content=content, dst_node_id=5, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _stopped(*_args) -> bytes:
    raise RunNotRunningException


def _pull(state, store, msg: Message, stopped: bool) -> int | None:
    """One pull of the loop (fedfhe's), the SuperLink saying the run stopped meanwhile, or serving the objects."""
    objects = {} if stopped else {oid: obj.deflate() for oid, obj in _nested(msg).items()}
    delivered = [(msg, get_object_tree(msg))]
    return flower_supernode.pull_and_store_message(
        state=state, object_store=store, node_config={}, receive=lambda: delivered.pop() if delivered else None,
        get_run=None, get_fab=None, pull_object=_stopped if stopped else (lambda run_id, oid: objects[oid]),
        confirm_message_received=_stopped if stopped else (lambda *_: None), trusted_entities=None)


def _nested(msg: Message) -> dict:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return get_all_nested_objects(msg)


def _reply(state, store, to: Message) -> Message:
    TaskIdentity.run_id = to.metadata.run_id
    reply = Message(RecordDict({"metrics": ConfigRecord({"ok": 1})}), reply_to=to)
    loop._insert_message(reply, state, store)
    return reply


class _Link:
    """The SuperLink's side of a push: refuses replies of the stopped run, as Flower's does."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, message: Message, tree, runtime) -> tuple[set[str], str]:
        self.sent.append(message.metadata.run_id)
        if message.metadata.run_id == STOPPED:
            raise RunNotRunningException
        return set(), "session"


def _push(push_fn, state, store, link: _Link) -> threading.Thread:
    thread = threading.Thread(target=push_fn, kwargs={"state": state, "object_store": store, "send": link.send,
                                                      "push_object": lambda *_: None}, daemon=True)
    thread.start()
    return thread


def test_the_stopped_run_reply_no_longer_stands_in_for_the_current_one():
    state, store = _node()
    stale = _message(STOPPED, 1.0)
    assert _pull(state, store, stale, stopped=True) is None  # "Ignoring message": Flower leaves its task behind
    current = _message(CURRENT, 2.0)
    assert _pull(state, store, current, stopped=False) == CURRENT
    assert {"message_id": current.metadata.message_id} == flower_supernode.AWAITED
    _reply(state, store, stale)  # the stale ClientApp answers first

    link = _Link()
    pushing = _push(flower_supernode.push_messages, state, store, link)
    pushing.join(2.0)
    assert pushing.is_alive() and link.sent == [STOPPED]  # still waiting: the current reply has not gone out
    _reply(state, store, current)
    pushing.join(10.0)
    assert not pushing.is_alive() and link.sent == [STOPPED, CURRENT]


def test_flower_alone_returns_after_the_stopped_runs_reply():
    """The bug the repair exists for: if this fails, Flower fixed it and the repair can go."""
    state, store = _node()
    _reply(state, store, _message(STOPPED, 1.0))
    link = _Link()
    pushing = _push(flower_supernode.FLOWER_PUSH, state, store, link)
    pushing.join(10.0)
    assert not pushing.is_alive() and link.sent == [STOPPED]  # returned: the loop pulls the next message


def test_an_ignored_message_is_not_awaited():
    state, store = _node()
    assert _pull(state, store, _message(STOPPED, 1.0), stopped=True) is None
    assert flower_supernode.AWAITED == {}
