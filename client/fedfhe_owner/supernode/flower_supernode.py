"""``flower-supernode`` with one repair: a message of a stopped run must not wedge the SuperNode.

Flower 1.39's SuperNode loop (flwr/supernode/start_client_internal.py) pulls one message, then
``_push_messages`` waits for *any* reply and pushes what replies there are. It creates the task and
stores the message *before* it pulls the message's objects; when the run is stopped in that window
(an operator's ``flwr stop``, the coordinator's deadline) it logs "Ignoring message" and leaves both.
The ClientApp started for that task waits for objects that never come, until a later run's message
brings objects with the same content ids (same initial model, same config). Its reply (for the
stopped run) is then the first reply ``_push_messages`` sees: it pushes that one and returns, and
from then on the node answers every message one message late, so every later run waits on it until
it times out. CI saw exactly this (4 loopback runs timed out after one interrupted run).

The repair: the loop pushes until the reply to the message it just pulled has gone out (earlier
replies go out too, as Flower would send them). Nothing of the stale task is touched: finishing it
revokes a token its SuperExec may be using, and a 401 makes Flower's SuperExec SIGINT itself.
Everything else is Flower's own ``flower-supernode``.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.supercore import log
from flwr.supernode import start_client_internal as loop
from flwr.supernode.cli import flower_supernode

FLOWER_PULL = loop._pull_and_store_message  # noqa: SLF001 - the two functions repaired here
FLOWER_PUSH = loop._push_messages  # noqa: SLF001
AWAITED: dict[str, str] = {}  # "message_id": the message the loop pulled last, whose reply it must push


def pull_and_store_message(**kwargs: Any) -> int | None:
    """Flower's ``_pull_and_store_message``; remembers the message whose reply the push must wait for."""
    receive: Callable[[], tuple[Message, Any] | None] = kwargs["receive"]
    received: list[Message] = []

    def remembering_receive() -> tuple[Message, Any] | None:
        got = receive()
        if got is not None:
            received.append(got[0])
        return got

    run_id = FLOWER_PULL(**{**kwargs, "receive": remembering_receive})
    if run_id is not None and received:
        AWAITED["message_id"] = received[0].metadata.message_id
    return run_id


def push_messages(**kwargs: Any) -> None:
    """Flower's ``_push_messages``, again until the reply to the message pulled last has been pushed."""
    send: Callable[..., Any] = kwargs["send"]
    answered: set[str] = set()

    def noting_send(message: Message, *args: Any) -> Any:
        answered.add(message.metadata.reply_to_message_id)
        return send(message, *args)

    awaited = AWAITED.pop("message_id", None)
    while True:
        FLOWER_PUSH(**{**kwargs, "send": noting_send})
        if awaited is None or awaited in answered:
            return
        log(WARNING, "fedfhe: pushed a reply to an earlier message (of a stopped run); still waiting for the "
            "reply to %s", awaited)


def install() -> None:
    loop._pull_and_store_message = pull_and_store_message  # noqa: SLF001
    loop._push_messages = push_messages  # noqa: SLF001


def main() -> int | None:
    install()
    sys.argv[0] = "flower-supernode"
    name_process("flower-supernode")
    return flower_supernode()


def name_process(name: str) -> None:
    """What ``ps``, ``ss -p`` and ``top`` show (15 bytes): operators look for flower-supernode, not python."""
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
