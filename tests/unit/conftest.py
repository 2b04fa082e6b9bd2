"""Fixtures the unit tests of several modules share (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfhe_common.pki.ca import init_ca


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A new project CA of this test's own (tests that re-issue, renew or revoke change it)."""
    d = tmp_path / "ca"
    d.mkdir()
    init_ca(d)
    return d
