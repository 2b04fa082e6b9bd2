"""The coordinator submits fedfhe's Flower App without the data owners' package installed.

Stock ``flwr run`` needs the clientapp's package importable on the submitting host (see
``fedfhe_server.flwr_run``); ``fedfhe-server train`` goes through ``flwr_run``, which does not.
fedfhe-server's own dependencies leave fedfhe-client out (``test_package_dependencies.py``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import subprocess
import sys
import textwrap

import pytest
from flwr.cli import config_utils

from fedfhe_server import flwr_run
from fedfhe_server.flwr_cli import flower_app_dir

APP_CONFIG = flower_app_dir() / "pyproject.toml"


class _NoClientPackage(importlib.abc.MetaPathFinder):
    """As on a host without fedfhe-client: the package cannot be found."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fedfhe_client":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def without_client_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "fedfhe_client"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoClientPackage(), *sys.meta_path])


def test_the_app_names_a_clientapp_from_the_owners_package() -> None:
    config, _ = flwr_run.load_and_validate(APP_CONFIG)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"].startswith("fedfhe_client.")
    assert components["serverapp"].startswith("fedfhe_server.")


def test_stock_flwr_run_needs_the_client_package(without_client_package: None) -> None:
    """Why flwr_run exists: if this stops failing, a Flower upgrade dropped the check and flwr_run can go."""
    with pytest.raises(ModuleNotFoundError, match="fedfhe_client"):
        config_utils.load_and_validate(APP_CONFIG)


def test_flwr_run_checks_only_the_serverapp(without_client_package: None, tmp_path) -> None:
    config, _ = flwr_run.load_and_validate(APP_CONFIG)
    assert config["project"]["name"] == "fedfhe"
    broken = tmp_path / "pyproject.toml"
    broken.write_text(APP_CONFIG.read_text().replace("fedfhe_server.server_app:app", "fedfhe_server.nothing:app"))
    with pytest.raises(ValueError, match="fedfhe_server.nothing"):
        flwr_run.load_and_validate(broken)


def test_flwr_run_replaces_the_call_flwr_run_makes() -> None:
    """`flwr run` looks load_and_validate up in its module's globals, where main() puts flwr_run's."""
    run_module = importlib.import_module(flwr_run.RUN_MODULE)
    assert run_module.load_and_validate is config_utils.load_and_validate
    assert "load_and_validate" in run_module.run.__code__.co_names


def test_flwr_run_submits_without_the_client_package(tmp_path) -> None:
    """The whole CLI, as `fedfhe-server train` starts it, gets past validation to the connection."""
    (tmp_path / "config.toml").write_text("")
    code = textwrap.dedent(f"""
        import importlib.abc, runpy, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "fedfhe_client":
                    raise ModuleNotFoundError(name, name=name)
        sys.meta_path.insert(0, Block())
        sys.argv = ["flwr", "run", {str(flower_app_dir())!r}, "no-such-connection"]
        runpy.run_module("fedfhe_server.flwr_run", run_name="__main__")
    """)
    env = {"PATH": "/usr/bin:/bin", "FLWR_HOME": str(tmp_path), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "fedfhe_client" not in out and "no-such-connection" in out, out
