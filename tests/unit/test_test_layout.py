"""The test tree's own rules (tests/conftest.py): one axis, unique module names, helpers outside test_*."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
AXIS = {"unit", "loopback", "multihost", "support"}


def test_test_modules_have_unique_basenames() -> None:
    """Without __init__.py files pytest imports test modules by basename: two equal names fail collection."""
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], names


def test_tests_live_along_one_axis_and_helpers_are_not_test_modules() -> None:
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__" and not p.name.startswith(".")}
    assert folders <= AXIS, folders - AXIS
    assert not list((TESTS / "support").glob("test_*.py"))
