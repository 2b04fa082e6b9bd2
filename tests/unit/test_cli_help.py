"""Every option of every console script says what it is for, and every command's --help ends with an example.

Issue 28: options without help text (``--rounds ROUNDS`` and nothing else) and no command line to start from.
The examples are parsed by the command's own parser, so one that goes stale with an option fails here.
"""

from __future__ import annotations

import argparse
import shlex
from functools import cache

import pytest
from test_docs import _cli_reference  # the one loader of scripts/cli_reference.py


@cache
def _commands() -> list[tuple[list[str], argparse.ArgumentParser, argparse.ArgumentParser]]:
    """(words of the command line, its parser, the program's parser) of every command that runs something."""
    ref = _cli_reference()
    return [(words, p, top) for name, top in ref.programs() for words, _, p in ref.walk([name], top)
            if not ref.subcommands(p)]


def test_every_option_has_help_text():
    """Every parser, the programs' own too (fedfhe-pki --dir, --version), not only the commands that run."""
    ref = _cli_reference()
    parsers = [(words, p) for name, top in ref.programs() for words, _, p in ref.walk([name], top)]
    missing = [f"{' '.join(words)} {a.option_strings[0] if a.option_strings else a.dest}"
               for words, p in parsers for a in p._actions
               if not (a.help or "").strip() and not isinstance(a, argparse._SubParsersAction)]
    assert not missing, f"options without help text: {missing}"


def test_every_command_help_ends_with_an_example_that_parses():
    wrong = []
    for words, p, top in _commands():
        lines = (p.epilog or "").strip().splitlines()
        example = lines[-1].strip() if lines else ""
        if not example.startswith(" ".join(words)) or "example" not in p.format_help().rsplit("\n\n", 1)[-1]:
            wrong.append(f"{' '.join(words)}: no example at the end of --help")
            continue
        try:
            top.parse_args(shlex.split(example)[1:])
        except SystemExit:
            wrong.append(f"{' '.join(words)}: its example does not parse: {example}")
    assert not wrong, wrong


@pytest.mark.parametrize("name", ["fedfhe-coordinator", "fedfhe-pki"])
def test_the_example_stays_on_its_own_line(name, capsys):
    words, p, _ = next(c for c in _commands() if c[0][0] == name and len(c[0]) > 1)
    assert p.format_help().rstrip().endswith(f"example:\n  {p.epilog.splitlines()[-1].strip()}")


def test_version_is_the_programs_and_the_model_version_is_model_version():
    """Issue 28: ``--version`` printed the program's version at the top but took a model version on
    predict, delete-keys and compile. Now it is the program's everywhere; a model version is ``--model-version``."""
    ref = _cli_reference()
    for name, top in ref.programs():
        assert any(isinstance(a, argparse._VersionAction) for a in top._actions), f"{name}: no --version"
        for words, _, p in ref.walk([name], top):
            if p is not top:
                assert not any("--version" in a.option_strings for a in p._actions), f"{' '.join(words)}: --version"
    options = {tuple(words): {o for a in p._actions for o in a.option_strings} for words, p, _ in _commands()}
    for words in (("fedfhe-owner", "predict"), ("fedfhe-owner", "delete-keys"), ("fedfhe-coordinator", "compile")):
        assert "--model-version" in options[words], words
