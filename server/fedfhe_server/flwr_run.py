"""`flwr run` on the coordinator, which does not install the data owners' package (fedfhe-client).

Flower 1.39's ``flwr run APP`` finds the module of every component the app's pyproject names on
the machine that submits: ``flwr/cli/run/run.py:129`` calls ``load_and_validate`` with
``check_module`` left at True (``flwr/cli/config_utils.py:53``), which checks the serverapp and the
clientapp (``flwr/common/config.py:414-419``), and ``object_ref.validate`` runs ``find_spec`` on
the module (``flwr/supercore/object_ref.py:92``), which imports its package: without fedfhe-client,
``ModuleNotFoundError: No module named 'fedfhe_client'``. Nothing on the coordinator runs the
ClientApp: the SuperLink's ServerApp reads only the serverapp component
(``flwr/superlink/runtime/run_serverapp.py:200``), building the FAB checks no module
(``flwr/cli/build.py:269``), and only owners' SuperNodes load ``fedfhe_client.client_app:app``
(``flwr/clientapp/utils.py:78``).

So ``fedfhe-server train`` runs Flower's own CLI through :func:`main`, which checks the serverapp's
module only. The FAB (and so the app digest owners pin), the submission and the stream are
Flower's, unchanged. ``tests/unit/test_coordinator_install.py`` fails if a Flower upgrade moves the
call this relies on.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from flwr.cli import config_utils
from flwr.supercore import object_ref

RUN_MODULE = "flwr.cli.run.run"  # `flwr run`; it calls load_and_validate by this module's global name


def load_and_validate(path: Path, check_module: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Flower's ``load_and_validate``, finding only the ServerApp's module (the ClientApp is owners')."""
    config, warnings = config_utils.load_and_validate(path, check_module=False)
    if check_module:
        ref = config["tool"]["flwr"]["app"]["components"]["serverapp"]
        ok, reason = object_ref.validate(ref, True, Path(path).parent)
        if not ok:
            raise ValueError(f"Invalid Flower App configuration in '{path}':\n- {reason}")
    return config, warnings


def main() -> int:
    """``flwr ARGS...`` with the clientapp check above; ``python -m fedfhe_server.flwr_run run APP ...``."""
    importlib.import_module(RUN_MODULE).load_and_validate = load_and_validate
    from flwr.cli.app import app

    return app(prog_name="flwr")


if __name__ == "__main__":
    sys.exit(main())
