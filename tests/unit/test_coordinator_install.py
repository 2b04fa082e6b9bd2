"""Why the coordinator installs fedfhe-owner: stock ``flwr run`` finds the ClientApp's module too.

docs/flower-notes.md ("Things learned the hard way"): fedfhe does not replace Flower's functions at
run time, so the coordinator installs the owners' package only for this check. When a
Flower release stops checking the clientapp on the submitting host, the second test
fails and the coordinator's install of fedfhe-owner can go.
"""

from __future__ import annotations

import importlib.abc
import sys

import pytest
from flwr.cli import config_utils

from fedfhe_coordinator.train.flwr_cli import flower_app_dir

APP_CONFIG = flower_app_dir() / "pyproject.toml"


class _NoClientPackage(importlib.abc.MetaPathFinder):
    """As on a host without fedfhe-owner: the package cannot be found."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fedfhe_owner":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def without_client_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "fedfhe_owner"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoClientPackage(), *sys.meta_path])


def test_the_app_names_a_clientapp_from_the_owners_package() -> None:
    config, _ = config_utils.load_and_validate(APP_CONFIG, check_module=False)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"].startswith("fedfhe_owner.")
    assert components["serverapp"].startswith("fedfhe_coordinator.")


def test_stock_flwr_run_needs_the_client_package(without_client_package: None) -> None:
    with pytest.raises(ModuleNotFoundError, match="fedfhe_owner"):
        config_utils.load_and_validate(APP_CONFIG)
