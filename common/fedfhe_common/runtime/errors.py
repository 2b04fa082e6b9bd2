"""Error types whose message is meant for an operator, not a traceback."""

from __future__ import annotations


class FedfheError(Exception):
    """Base of every error fedfhe reports as a one-line message."""


class ConfigError(FedfheError):
    """A configuration file or key is wrong; the message names it."""


class DataError(FedfheError):
    """A data file does not fit its schema; the message names file and line."""

    def __init__(self, path: object, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.problem = problem
        self.line = line


class IntegrityError(FedfheError):
    """An artifact or bundle does not match its manifest."""


class PKIError(FedfheError):
    """A certificate or key operation was refused."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `kill`) while a command must clean up as on Ctrl-C; it exits 143."""
