"""fedfhe_install's switch_venv.sh: the venv path moves to a finished install in one rename.

The script runs as Ansible runs it (sh, the two arguments) on a real folder layout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy/ansible/roles/fedfhe_install/files/switch_venv.sh"


def _install(prefix: Path, name: str, finished: bool = True) -> Path:
    venv = prefix / "venvs" / name
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(name)
    if finished:
        (venv / ".fedfhe-installed").write_text(f"{name}\n")
    return venv


def _switch(prefix: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), name, str(prefix / "venv")], capture_output=True, text=True)


def _current(prefix: Path) -> str:
    return (prefix / "venv" / "bin" / "python").read_text()


def test_first_install_then_upgrades_keep_only_the_replaced_venv(tmp_path: Path) -> None:
    _install(tmp_path, "a")
    assert _switch(tmp_path, "a").returncode == 0
    venv = tmp_path / "venv"
    assert venv.is_symlink() and str(venv.readlink()) == "venvs/a"  # relative: the host's root may be mounted anywhere
    assert _current(tmp_path) == "a"

    _install(tmp_path, "b")
    assert _switch(tmp_path, "b").returncode == 0
    assert _current(tmp_path) == "b"
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == ["a", "b"]  # services may still run from a

    _install(tmp_path, "c")
    _install(tmp_path, "half", finished=False)  # what an interrupted install of another build left
    assert _switch(tmp_path, "c").returncode == 0
    assert _current(tmp_path) == "c"
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == ["b", "c"]
    assert not (tmp_path / "venv.next").exists()


def test_an_unfinished_install_is_refused_and_the_venv_left_alone(tmp_path: Path) -> None:
    _install(tmp_path, "a")
    assert _switch(tmp_path, "a").returncode == 0
    _install(tmp_path, "b", finished=False)
    res = _switch(tmp_path, "b")
    assert res.returncode != 0 and "not a finished install" in res.stderr, res.stderr
    assert _current(tmp_path) == "a"
    assert (tmp_path / "venvs" / "b").exists()


@pytest.mark.parametrize("trailing_slash", [False, True])
def test_a_venv_installed_in_place_before_becomes_the_previous_one(tmp_path: Path, trailing_slash: bool) -> None:
    legacy = tmp_path / "venv"
    (legacy / "bin").mkdir(parents=True)
    (legacy / "bin" / "python").write_text("legacy")
    _install(tmp_path, "a")
    res = subprocess.run(["sh", str(SCRIPT), "a", str(legacy) + ("/" if trailing_slash else "")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert legacy.is_symlink() and _current(tmp_path) == "a"
    assert (tmp_path / "venvs" / "previous" / "bin" / "python").read_text() == "legacy"
