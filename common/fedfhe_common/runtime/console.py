"""The one main of fedfhe's console scripts: parse, run the chosen command, report an error on one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fedfhe_common.runtime.errors import FedfheError, Terminated
from fedfhe_common.runtime.exit_status import keep_exit_status

EXIT_FAILED = 1  # the command ran and failed (bad config, refused input, a failed run)
EXIT_USAGE = 2  # argparse: the command line itself is wrong
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM turned into errors.Terminated (128 + 15, as a shell reports it)
# console script -> the distribution that ships it (the others ship under their own name)
DISTRIBUTIONS = {"fedfhe-pki": "fedfhe-common", "fedfhe-partition": "fedfhe-testbed"}


def version_text(prog: str) -> str:
    """``PROG X.Y.Z (flwr A, concrete-ml B)``: what an operator quotes in a bug report."""
    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return (f"{prog} {of(DISTRIBUTIONS.get(prog, prog))} "
            f"(flwr {of('flwr')}, concrete-ml {of('concrete-ml')}, concrete-python {of('concrete-python')})")


def command_parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, Any]:
    """A parser and its subcommands (``args.cmd``), each of which sets the ``fn`` that :func:`run` calls."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    return parser, parser.add_subparsers(dest="cmd", required=True)


def add_command(sub: Any, name: str, fn: Callable[[argparse.Namespace], int | None], help: str, *,
                config: bool | str = False) -> argparse.ArgumentParser:
    """Subcommand ``name`` running ``fn(args)``; ``config`` adds the required ``--config FILE`` (a string: the file's
    usual name, for its help)."""
    p = sub.add_parser(name, help=help)
    if config:
        what = config if isinstance(config, str) else "the role's YAML config file"
        p.add_argument("--config", type=Path, required=True, help=f"{what} (see check-config)")
    p.set_defaults(fn=fn)
    return p


def set_example(parser: argparse.ArgumentParser, example: str) -> None:
    """End ``parser``'s --help with one example command line: the quickest answer to "how is this called"."""
    parser.epilog = f"example:\n  {example}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example on its own line


def add_examples(parser: argparse.ArgumentParser, examples: dict[str, str]) -> None:
    """``set_example`` on each subcommand of ``parser``: ``examples`` maps its name to the arguments after it."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                if name in examples:
                    set_example(sub, f"{parser.prog} {name} {examples[name]}".rstrip())


def run(
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    *,
    errors: tuple[type[BaseException], ...] = (),
    name_command: bool = True,
) -> int:
    """Parse ``argv``, call ``args.fn(args)`` and return its exit code (``None`` counts as 0).

    Exit codes, the same for every script (docs/operator-guide.md, "Versions, exit codes"): 0 done, 1
    failed (a FedfheError, or one of ``errors``, printed as one line on stderr,
    ``PROG CMD: error: MESSAGE``; ``PROG: error: MESSAGE`` when the parser has no
    ``cmd`` subcommand or ``name_command`` is false), 2 usage (argparse), 130
    interrupted, 143 terminated (a command that turns SIGTERM into ``Terminated``). Anything else
    propagates (a traceback is a bug). ``--version``
    prints :func:`version_text`.
    """
    parser.add_argument("--version", action="version", version=version_text(parser.prog))
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (FedfheError, *errors) as exc:
        cmd = getattr(args, "cmd", None) if name_command else None
        print(f"{parser.prog}{f' {cmd}' if cmd else ''}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated:
        print(f"{parser.prog}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        keep_exit_status()  # else a command that ran a circuit exits 0 whatever it returns
