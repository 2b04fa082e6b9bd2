"""Refused calls rate-limited per owner: a flood of bad calls is turned away at the door, cheaply.

Every refusal (a bad request, an unknown model, a full slot, ...) costs the node a
thread, the call's TLS and identity work, and a log line. An owner sending them
without pause (89,000 in two minutes in one measurement) slowed every other
owner. Each owner has a token bucket: a refused call spends a token, tokens come
back at ``limits.refusals_per_owner_per_s`` up to ``limits.refusal_burst``. An
owner with no token left is refused at admission, before any slot, request
message or log line, until one comes back; one warning says when that starts.
Honest owners stay far from the burst (a failed batch is one refusal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

# How a call ends when the caller, not the node, was at fault: these spend a token. RESOURCE_EXHAUSTED is
# not among them (a full disk or store is the node's state, and an owner retrying it must not lock itself
# out); the Guard spends one for its own RESOURCE_EXHAUSTED, an owner already at its call or stream limit.
REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS,
})


class RefusalBudget:
    """Per-owner token buckets of refused calls (thread-safe)."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second, self.burst, self.clock = float(per_second), float(burst), clock
        self._tokens: dict[str, tuple[float, float]] = {}  # owner -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, owner: str, now: float) -> float:
        tokens, at = self._tokens.get(owner, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_second)

    def wait_s(self, owner: str) -> float:
        """Seconds until ``owner`` may be refused again at full cost; 0 when it has a token."""
        with self._lock:
            level = self._level(owner, self.clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.per_second

    def spend(self, owner: str) -> bool:
        """Count one refused call; True when it spent the owner's last token (say so once)."""
        with self._lock:
            now = self.clock()
            level = self._level(owner, now)
            left = max(0.0, level - 1.0)
            self._tokens[owner] = (left, now)
            return level >= 1.0 > left
