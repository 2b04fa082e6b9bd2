"""The node's log lines on stderr: plain text for people, or one JSON object per line for log shippers.

``fedfhe-inference serve --log-format json`` writes ``{"time", "level", "logger", "message"}`` (and
``"exception"`` with the traceback) per record, so journald, Loki or Elasticsearch take fields
without a parsing rule. Owners' values in messages are escaped either way (display.OneLineLogs).
"""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, never extra lines)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """Root logging to stderr in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
