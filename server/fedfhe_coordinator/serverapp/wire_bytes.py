"""A grid that counts what each round costs on the wire, per data owner: the bytes of every message and reply.

The size is that of the message content as Flower serialises it (protobuf), to and
from each node, so plain and SecAgg+ rounds (one exchange against four) compare
directly; TLS and gRPC framing add a little on top.
"""

from __future__ import annotations

from collections import defaultdict

from flwr.app import Message
from flwr.common.serde import recorddict_to_proto

from fedfhe_coordinator.serverapp.prompt_grid import PromptGrid


def content_bytes(message: Message) -> int:
    return int(recorddict_to_proto(message.content).ByteSize()) if message.has_content() else 0


class CountingGrid(PromptGrid):
    """PromptGrid that adds up, for the round the strategy last configured, the bytes sent to and from each node."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.round = 0
        self.bytes: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        counts = self.bytes[self.round]
        dst = {}
        for m in messages:
            counts[int(m.metadata.dst_node_id)] += content_bytes(m)
            dst[m.metadata.message_id] = int(m.metadata.dst_node_id)
        for r in replies:
            node = dst.get(r.metadata.reply_to_message_id, int(r.metadata.src_node_id))
            counts[node] += content_bytes(r)
        return replies

    def per_node(self, server_round: int) -> dict[int, int]:
        return dict(self.bytes.get(server_round, {}))
