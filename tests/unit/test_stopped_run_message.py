"""A message whose run stops while the SuperNode receives it leaves nothing behind (Flower 1.39 did)."""

from __future__ import annotations

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

from fedfhe_owner import flower_supernode

RUN_ID = 77


def _node() -> tuple:
    factory = NodeStateFactory(ObjectStoreFactory())
    state, store = factory.state(), factory.objectstore_factory.store()
    state.set_node_id(5)
    run = Run.create_empty(RUN_ID)
    run.status = RunStatus(Status.RUNNING, "", "")
    state.store_run(run)
    return state, store


@pytest.fixture(autouse=True)
def _identity(monkeypatch):
    """What a SuperLink sets when it writes a message of run RUN_ID."""
    for name, value in (("_run_id", RUN_ID), ("_node_id", 1), ("_task_id", 9)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _message() -> Message:
    content = RecordDict({"arrays": ArrayRecord([np.zeros(64)]), "config": ConfigRecord({"round": 1})})
    msg = Message(content=content, dst_node_id=5, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _pull(pull_fn, state, store, msg: Message) -> int | None:
    """One turn of the SuperNode loop on ``msg``, the SuperLink saying its run stopped meanwhile."""
    delivered = [(msg, get_object_tree(msg))]

    def stopped(*_args) -> bytes:
        raise RunNotRunningException

    return pull_fn(state=state, object_store=store, node_config={},
                   receive=lambda: delivered.pop() if delivered else None, get_run=None, get_fab=None,
                   pull_object=stopped, confirm_message_received=stopped, trusted_entities=None)


def _pending(state) -> list:
    return [task for task in state.get_tasks() if task.status.status != Status.FINISHED]


def test_flower_alone_leaves_the_task_that_wedges_the_node():
    """The bug the repair exists for: if this fails, Flower fixed it and the repair can go."""
    state, store = _node()
    assert loop._pull_and_store_message is flower_supernode.FLOWER_PULL  # not patched in this process
    assert _pull(flower_supernode.FLOWER_PULL, state, store, _message()) is None
    assert len(_pending(state)) == 1


def test_the_repair_finishes_the_task_and_drops_the_message():
    state, store = _node()
    msg = _message()
    assert _pull(flower_supernode.pull_and_store_message, state, store, msg) is None
    assert _pending(state) == []
    finished = state.get_tasks(run_ids=[RUN_ID])
    assert [t.status.details for t in finished] == [flower_supernode.STOPPED_DETAILS]
    assert state.get_messages(run_ids=[RUN_ID]) == []
    assert store.get(msg.metadata.message_id) is None


def test_the_repair_leaves_earlier_tasks_alone():
    state, store = _node()
    earlier = state.create_task(task_type="client_app", run_id=RUN_ID, fab_hash="")
    assert _pull(flower_supernode.pull_and_store_message, state, store, _message()) is None
    assert [t.task_id for t in _pending(state)] == [earlier]

