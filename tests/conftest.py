"""Shared test fixtures and markers."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: real processes on loopback")
    config.addinivalue_line("markers", "multihost: network namespaces, sshd and ansible (needs root)")
    config.addinivalue_line("markers", "slow: takes more than a minute")


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd)")


@pytest.fixture
def needs_fashion_mnist() -> None:
    from fedfhe_demo.datasets import FASHION_DIR

    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST missing at {FASHION_DIR}: apt-get install dataset-fashion-mnist")


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
