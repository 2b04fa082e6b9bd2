"""Log lines of fedfhe's three services: plain text for people, or one JSON object per line for log shippers.

``--log-format json`` (``fedfhe-inference serve``, ``fedfhe-coordinator superlink``, ``fedfhe-owner supernode``)
writes ``{"time", "level", "logger", "message"}`` per record (and ``"exception"`` with the traceback), so
journald, Loki or Elasticsearch take fields without a parsing rule. Lines a Flower child process prints
(flower-superlink, flower-supernode and what they start) become records too (:func:`wrap_line`), with
``"source"`` naming the command. ``--log-level`` sets the level of fedfhe's records and, through
``FLWR_LOG_LEVEL`` (:func:`flower_level_env`), of the Flower processes the service starts. One home for the
format and the level: every service imports them from here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import re
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # what --log-level offers (CRITICAL would hide errors)
DEFAULT_LEVEL = "INFO"
FLOWER_LEVEL_ENV = "FLWR_LOG_LEVEL"  # read by flwr.supercore.logger when a Flower process starts
# Flower's console lines: "INFO :      Starting Flower SuperLink" (colours when it thinks it has a terminal).
FLOWER_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*(.*)$", re.S)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_LINE = 16384  # characters kept of one relayed line (a runaway line must not become a runaway record)


def iso_time(created: float) -> str:
    """UTC with milliseconds and a Z: ``2026-11-26T23:01:02.345Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, never extra lines)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(log_format: str = "text", level: str = DEFAULT_LEVEL) -> None:
    """Root logging to stderr in ``log_format`` ("text" or "json"), records below ``level`` dropped."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def flower_level_env(env: dict[str, str], level: str) -> dict[str, str]:
    """``env`` with ``FLWR_LOG_LEVEL`` set to ``level``: Flower's processes log at the service's level.

    The flag wins over a ``FLWR_LOG_LEVEL`` already in the environment: one setting for the whole service.
    """
    return {**env, FLOWER_LEVEL_ENV: level}


# torch.utils.cpp_extension (Concrete ML imports it) prints this to stderr on a host with a CUDA toolkit and no GPU.
CUDA_NOTICE = "No CUDA runtime is found"


def import_quietly(module: str) -> list[str]:
    """Import ``module`` (Concrete ML) with stderr captured; the lines its import printed.

    Concrete ML imports torch.utils.cpp_extension, which prints "No CUDA runtime is found, using CUDA_HOME=..."
    straight to stderr on a host with a CUDA toolkit but no GPU: a bare line among ``--log-format json``
    records that log shippers cannot parse. Imported once here, later imports print nothing; the caller decides
    what the lines become. A module that is not installed is left for its user to report.
    """
    if module in sys.modules:
        return []
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            importlib.import_module(module)
    except ImportError:
        pass
    return captured.getvalue().splitlines()


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-format text|json`` and ``--log-level LEVEL`` on a long-running service's subcommand."""
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="log lines: text, or one JSON object per line (default: text)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=DEFAULT_LEVEL, type=str.upper,
                        help=f"lowest level logged, by this service and the Flower processes it starts "
                             f"(default: {DEFAULT_LEVEL})")


def wrap_line(line: str, source: str, stream: str, now: float | None = None) -> str:
    """One line a child process printed, as a JSON record naming ``source`` (its command) and ``stream``.

    Flower's level prefix becomes ``level`` (else INFO on stdout, WARNING on stderr); colour codes
    are dropped. A line that already is one of these records (a fedfhe process started with
    ``--log-format json`` down the tree) keeps its fields and gains ``source``.
    """
    text = ANSI.sub("", line.rstrip("\r\n"))[:MAX_LINE]
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict) and {"time", "level", "message"} <= record.keys():
            record.setdefault("source", source)
            return json.dumps(record, ensure_ascii=False)
    match = FLOWER_LINE.match(text)
    level, message = (match.group(1), match.group(2)) if match else ("WARNING" if stream == "stderr" else "INFO", text)
    return json.dumps({
        "time": iso_time(time.time() if now is None else now),
        "level": level,
        "logger": "flwr" if match else source,
        "message": message.rstrip(),
        "source": source,
        "stream": stream,
    }, ensure_ascii=False)
