"""``flower-supernode`` with one repair: a message of a stopped run must not wedge the SuperNode.

Flower 1.39's SuperNode loop (flwr/supernode/start_client_internal.py) creates the task and stores
the message *before* it pulls the message's objects. When the run is stopped in that window (an
operator's ``flwr stop``, the coordinator's deadline), the pull raises RunNotRunningException and
the loop logs "Ignoring message" but leaves the task pending and the message stored. The SuperExec
then starts a ClientApp for it, which waits for objects that never come, until a later run's message
brings objects with the same content ids (same initial model, same config). Its reply (for the
stopped run) then arrives first, ``_push_messages`` pushes that one and returns, and from then on
the node answers every message one message late: every later run waits on it until it times out.
CI saw exactly this (4 loopback runs timed out after one interrupted run).

The repair finishes the task (which revokes its ClientApp's token, so no reply can come of it) and
deletes the message whenever the loop ignored a message it had already stored. Everything else is
Flower's own ``flower-supernode``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.common.constant import SubStatus
from flwr.supercore import log
from flwr.supernode import start_client_internal as loop

FLOWER_PULL = loop._pull_and_store_message  # noqa: SLF001 - the one function repaired here
STOPPED_DETAILS = "fedfhe: the run stopped while this node was receiving the message"


def pull_and_store_message(**kwargs: Any) -> int | None:
    """Flower's ``_pull_and_store_message``; when it ignored a message, finish what it left behind."""
    state, store = kwargs["state"], kwargs["object_store"]
    receive: Callable[[], tuple[Message, Any] | None] = kwargs["receive"]
    received: list[Message] = []
    before: set[int] = set()

    def remembering_receive() -> tuple[Message, Any] | None:
        got = receive()
        if got is not None:  # the run's tasks before Flower makes one for this message (no cost when idle)
            received.append(got[0])
            before.update(task.task_id for task in state.get_tasks(run_ids=[got[0].metadata.run_id]))
        return got

    run_id = FLOWER_PULL(**{**kwargs, "receive": remembering_receive})
    if run_id is None and received:
        forget(state, store, received[0], before)
    return run_id


def forget(state: Any, store: Any, message: Message, before: set[int]) -> list[int]:
    """Finish the tasks made for ``message`` after ``before`` and drop the message; the tasks finished."""
    finished = [task.task_id for task in state.get_tasks(run_ids=[message.metadata.run_id])
                if task.task_id not in before
                and state.finish_task(task.task_id, sub_status=SubStatus.STOPPED, details=STOPPED_DETAILS)]
    message_id = message.metadata.message_id
    state.delete_messages(message_ids=[message_id])
    store.delete(message_id)
    if finished:
        log(WARNING, "fedfhe: run %s stopped while message %s arrived: its task %s finished, no ClientApp "
            "will answer it", message.metadata.run_id, message_id, ", ".join(map(str, finished)))
    return finished


def main() -> int | None:
    from flwr.supernode.cli import flower_supernode

    loop._pull_and_store_message = pull_and_store_message  # noqa: SLF001
    sys.argv[0] = "flower-supernode"
    return flower_supernode()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
