"""Show untrusted values safely: truncated and escaped before they reach a log line or a gRPC status.

An owner controls model ids, versions, certificate names and more. Echoed
whole, a 60 MiB id would be sent back in a status (and break the call), and a
newline in a name would forge a line in the node's log.
"""

from __future__ import annotations

import logging

STATUS_CHARS = 1000  # status details go into a trailer; gRPC's default metadata limit is 8 KiB
LOG_CHARS = 4000


def shown(value: object, limit: int = 120) -> str:
    """``value`` as one printable line of at most ~``limit`` characters (escapes counted as written)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
        total = len(value)
    else:
        text = value if isinstance(value, str) else str(value)
        total = len(text)
    out: list[str] = []
    used = 0
    for ch in text:
        # Backslashes stay as they are: escaping is then idempotent, so a value shown twice reads the same.
        piece = ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            return "".join(out) + f"... ({total} {'bytes' if isinstance(value, bytes | bytearray) else 'chars'})"
        out.append(piece)
        used += len(piece)
    return "".join(out)


def status_text(message: str) -> str:
    """A status message as sent to the caller: one line, bounded."""
    return shown(message, STATUS_CHARS)


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
