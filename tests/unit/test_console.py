"""Every console script: --version, and one set of exit codes (0 done, 1 failed, 2 usage, 130 interrupted,
143 terminated)."""

from __future__ import annotations

import argparse
import subprocess
from importlib.metadata import version

import pytest

from fedfhe_common.runtime.console import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, run
from fedfhe_common.runtime.errors import ConfigError, Terminated
from fedfhe_common.runtime.procs import venv_bin

SCRIPTS = ["fedfhe-coordinator", "fedfhe-owner", "fedfhe-inference", "fedfhe-pki", "fedfhe-partition"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_version_names_fedfhe_flower_and_concrete(script):
    res = subprocess.run([venv_bin(script), "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert line.startswith(f"{script} 0.") and f"flwr {version('flwr')}" in line and "concrete-ml " in line, line


def test_usage_errors_exit_2_and_failed_commands_exit_1(tmp_path):
    usage = subprocess.run([venv_bin("fedfhe-coordinator")], capture_output=True, text=True, timeout=120, check=False)
    assert usage.returncode == EXIT_USAGE == 2 and "required" in usage.stderr
    failed = subprocess.run([venv_bin("fedfhe-pki"), "--dir", str(tmp_path), "revoke", "nobody"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert failed.returncode == EXIT_FAILED == 1 and failed.stderr.startswith("fedfhe-pki: error: ")
    assert "Traceback" not in failed.stderr


def _parser(fn):
    ap = argparse.ArgumentParser(prog="fedfhe-x")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("go").set_defaults(fn=fn)
    return ap


def test_run_maps_errors_and_interrupts(capsys):
    def fail(args):
        raise ConfigError("rounds: must be at least 1")

    def interrupt(args):
        raise KeyboardInterrupt

    assert run(_parser(lambda a: None), ["go"]) == 0
    assert run(_parser(fail), ["go"]) == 1
    assert "fedfhe-x go: error: rounds: must be at least 1" in capsys.readouterr().err
    assert run(_parser(interrupt), ["go"]) == EXIT_INTERRUPTED == 130

    def terminated(args):
        raise Terminated

    assert run(_parser(terminated), ["go"]) == EXIT_TERMINATED == 143
    assert "fedfhe-x: terminated" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback
        run(_parser(lambda a: 1 / 0), ["go"])
