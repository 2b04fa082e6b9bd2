"""A process that ran a circuit still exits with its own status (fedfhe_common.runtime.exit_status).

Concrete's atexit handler ends such a process with 0; without the fix a red CI run, a failed
command and a crashed inference worker all report success.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_A_CIRCUIT = textwrap.dedent("""
    import sys
    from concrete import fhe

    @fhe.compiler({"x": "encrypted"})
    def f(x):
        return x + 1

    assert f.compile(range(4)).encrypt_run_decrypt(2) == 3
""")


def python(code: str) -> int:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300).returncode


def test_concrete_still_turns_a_failing_exit_into_zero() -> None:
    """Once this fails, Concrete keeps the status itself and fedfhe_common.runtime.exit_status can go."""
    assert python(RUN_A_CIRCUIT + "sys.exit(3)") == 0


def test_keep_exit_status_keeps_it() -> None:
    code = (RUN_A_CIRCUIT + "from fedfhe_common.runtime.exit_status import keep_exit_status\n"
            "keep_exit_status()\nsys.exit(3)")
    assert python(code) == 3


def test_a_command_that_ran_a_circuit_and_failed_exits_1() -> None:
    code = RUN_A_CIRCUIT + textwrap.dedent("""
        import argparse
        from fedfhe_common.runtime.console import run
        from fedfhe_common.runtime.errors import FedfheError

        def fail(args):
            raise FedfheError("refused")

        parser = argparse.ArgumentParser(prog="probe")
        parser.set_defaults(fn=fail)
        sys.exit(run(parser, []))
    """)
    assert python(code) == 1


@pytest.mark.skipif(os.environ.get("FEDFHE_EXIT_PROBE") != "1", reason="run only by the test below")
def test_probe_fails_after_a_circuit() -> None:
    exec(RUN_A_CIRCUIT)  # noqa: S102 - a fixed snippet
    pytest.fail("the probe fails on purpose")


def test_a_red_pytest_session_that_ran_a_circuit_exits_1() -> None:
    """What CI relies on: tests/conftest.py keeps pytest's status."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{Path(__file__).relative_to(ROOT)}::test_probe_fails_after_a_circuit"],
        cwd=ROOT, env={**os.environ, "FEDFHE_EXIT_PROBE": "1"}, capture_output=True, text=True, timeout=300)
    assert "1 failed" in proc.stdout, proc.stdout[-2000:]
    assert proc.returncode == 1, proc.stdout[-2000:]
