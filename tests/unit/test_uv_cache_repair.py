"""The multihost test's shared uv cache survives two hosts unpacking one wheel at once.

A real uv cache entry (uv installs a small wheel from a --find-links folder), torn the way
the race leaves it: the symlink names one host's archive, the ``.rev`` the other's. Pruning
that cache breaks every later install of the wheel (the red CI run of 2026-12-06); dropping
the torn entry first keeps it installable.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deployment import drop_torn_wheel_entries

UV = Path(sys.executable).parent / "uv"


def _wheel(folder: Path) -> Path:
    name, files = "fedfhe_probe-1.0-py3-none-any.whl", {
        "fedfhe_probe/__init__.py": b"VALUE = 1\n",
        "fedfhe_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fedfhe-probe\nVersion: 1.0\n",
        "fedfhe_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()) + "fedfhe_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / name, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr("fedfhe_probe-1.0.dist-info/RECORD", record)
    return folder / name


def _install(tmp: Path, cache: Path, links: Path, venv_name: str) -> subprocess.CompletedProcess[str]:
    venv = tmp / venv_name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return subprocess.run(
        [str(UV), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-index", "--find-links",
         str(links), "--cache-dir", str(cache), "--link-mode", "symlink", "fedfhe-probe"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "UV_NO_CONFIG": "1"})


def _tear(cache: Path) -> None:
    """Point the entry's symlink at a second copy of its archive, as the other host's unpack would."""
    (rev,) = cache.glob("wheels-v*/**/fedfhe-probe/*.rev")
    link = rev.with_suffix("")
    first = link.resolve()
    second = first.with_name(first.name[::-1])
    shutil.copytree(first, second, symlinks=True)
    link.unlink()
    link.symlink_to(Path("..", "..", "..", "..", first.parent.name, second.name))
    assert link.resolve() == second


@pytest.fixture()
def torn_cache(tmp_path: Path) -> tuple[Path, Path]:
    if not UV.exists():
        pytest.skip(f"uv is not installed next to {sys.executable}")
    links, cache = tmp_path / "links", tmp_path / "uv-cache"
    links.mkdir()
    _wheel(links)
    first = _install(tmp_path, cache, links, "venv-a")
    assert first.returncode == 0, first.stderr
    _tear(cache)
    return cache, links


def _prune(cache: Path) -> None:
    subprocess.run([str(UV), "cache", "prune", "--cache-dir", str(cache)], check=True, capture_output=True)


def test_pruning_a_torn_entry_breaks_the_next_install(torn_cache: tuple[Path, Path], tmp_path: Path) -> None:
    """The hazard itself, so the repair below is known to matter with this uv."""
    cache, links = torn_cache
    _prune(cache)
    res = _install(tmp_path, cache, links, "venv-b")
    assert res.returncode != 0 and "archive-v" in res.stderr, res.stderr


def test_dropping_torn_entries_before_pruning_keeps_installs_working(
        torn_cache: tuple[Path, Path], tmp_path: Path) -> None:
    cache, links = torn_cache
    removed = drop_torn_wheel_entries(cache)
    assert [p.parent.name for p in removed] == ["fedfhe-probe"]
    _prune(cache)
    res = _install(tmp_path, cache, links, "venv-b")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "venv-b" / "lib").exists()


def test_sound_entries_are_kept(tmp_path: Path) -> None:
    if not UV.exists():
        pytest.skip(f"uv is not installed next to {sys.executable}")
    links, cache = tmp_path / "links", tmp_path / "uv-cache"
    links.mkdir()
    _wheel(links)
    assert _install(tmp_path, cache, links, "venv-a").returncode == 0
    assert drop_torn_wheel_entries(cache) == []
    assert list(cache.glob("wheels-v*/**/fedfhe-probe/*.rev"))
