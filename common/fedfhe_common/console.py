"""The one main of fedfhe's console scripts: parse, run the chosen command, report an error on one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import FedfheError


def command_parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, Any]:
    """A parser and its subcommands (``args.cmd``), each of which sets the ``fn`` that :func:`run` calls."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    return parser, parser.add_subparsers(dest="cmd", required=True)


def add_command(sub: Any, name: str, fn: Callable[[argparse.Namespace], int | None], help: str, *,
                config: bool = False) -> argparse.ArgumentParser:
    """Subcommand ``name`` running ``fn(args)``; ``config`` adds the required ``--config FILE``."""
    p = sub.add_parser(name, help=help)
    if config:
        p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=fn)
    return p


def run(
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    *,
    errors: tuple[type[BaseException], ...] = (),
    name_command: bool = True,
    interrupted: int | None = None,
) -> int:
    """Parse ``argv``, call ``args.fn(args)`` and return its exit code (``None`` counts as 0).

    A FedfheError, or one of ``errors``, is printed as one line on stderr,
    ``PROG CMD: error: MESSAGE`` (``PROG: error: MESSAGE`` when the parser has
    no ``cmd`` subcommand or ``name_command`` is false), and the exit code is 2,
    as for argparse's own usage errors. Anything else propagates (a traceback is
    a bug). With ``interrupted`` set, Ctrl-C returns that code instead of a
    traceback.
    """
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (FedfheError, *errors) as exc:
        cmd = getattr(args, "cmd", None) if name_command else None
        print(f"{parser.prog}{f' {cmd}' if cmd else ''}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        return interrupted
