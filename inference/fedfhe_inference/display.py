"""Show untrusted values safely: truncated and escaped before they reach a log line or a gRPC status.

An owner controls model ids, versions, certificate names and more. Echoed
whole, a 60 MiB id would be sent back in a status (and break the call), and a
newline in a name would forge a line in the node's log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

STATUS_CHARS = 1000  # status details go into a trailer; gRPC's default metadata limit is 8 KiB
LOG_CHARS = 4000


def _escaped(chars: Iterable[str], budget: int) -> tuple[list[str], bool]:
    """Escaped pieces of ``chars`` up to ``budget`` written characters; True if all of ``chars`` fit."""
    out: list[str] = []
    used = 0
    for ch in chars:
        # Backslashes stay as they are: escaping is then idempotent, so a value shown twice reads the same.
        piece = ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        if used + len(piece) > budget:
            return out, False
        out.append(piece)
        used += len(piece)
    return out, True


def shown(value: object, limit: int = 120, tail: int = 0) -> str:
    """``value`` as one printable line of about ``limit`` characters (escapes counted as written).

    A longer value keeps its start and, with ``tail``, its last ``tail`` characters around a note of its size.
    """
    is_bytes = isinstance(value, bytes | bytearray)
    if is_bytes:
        data = bytes(value)  # type: ignore[arg-type]
        text = data[: limit * 4].decode("utf-8", errors="replace")
        end = data[-tail * 4:].decode("utf-8", errors="replace") if tail else ""
        total, whole = len(data), len(data) <= limit * 4
    else:
        text = value if isinstance(value, str) else str(value)
        end = text[-tail * 4:] if tail else ""
        total, whole = len(text), True
    pieces, complete = _escaped(text, limit)
    if complete and whole:
        return "".join(pieces)
    head = "".join(_escaped(text, limit - tail)[0])
    note = f"... ({total} {'bytes' if is_bytes else 'chars'})"
    if not tail:
        return head + note
    last = "".join(reversed(_escaped(reversed(end), tail)[0]))
    return f"{head}{note} ...{last}"


def status_text(message: str) -> str:
    """A status message as sent to the caller: one line, bounded, its start and its end kept (the reason is
    often after the echoed value)."""
    return shown(message, STATUS_CHARS, tail=STATUS_CHARS // 4)


class OneLineLogs(logging.Filter):
    """Escape and bound every record's message, so no value can start a forged log line.

    Tracebacks (``exc_info``) are kept: the logging module renders them itself, below the message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = shown(message, LOG_CHARS), None
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Put OneLineLogs on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, OneLineLogs) for f in handler.filters):
            handler.addFilter(OneLineLogs())
