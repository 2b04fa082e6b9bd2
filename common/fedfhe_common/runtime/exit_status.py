"""Keep a process's exit status once Concrete has run a circuit in it.

``concrete.compiler`` registers ``terminate_df_parallelization`` with :mod:`atexit`. Once a
circuit has run in the process (``FHEModelServer.run``, ``predict(fhe="execute")``,
``encrypt_run_decrypt``), that handler shuts the dataflow runtime down by ending the process
with status 0, whatever status Python was exiting with. A failed command, a red pytest session
(a CI run with 2 failed tests exited 0, 2026-11-26) or a crashed worker would all report
success. Measured with concrete-python 2.10 / concrete-ml 1.9.0;
``tests/unit/test_exit_status.py`` fails once Concrete stops doing it.

Unregistering the handler lets Python exit with its own status; the runtime's threads end
with the process, as they do on any ``exit_group``.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import NoReturn


def keep_exit_status() -> None:
    """Call on the way out of any process that may have run a circuit; harmless otherwise.

    Imports nothing: if Concrete's compiler was never imported, its handler is not registered.
    """
    compiler = sys.modules.get("concrete.compiler")
    handler = getattr(compiler, "_terminate_df_parallelization", None)
    if handler is not None:
        atexit.unregister(handler)


def exit_with(main: Callable[[], int | None]) -> NoReturn:
    """``sys.exit(main())`` for scripts outside :func:`fedfhe_common.runtime.console.run`, status kept."""
    try:
        sys.exit(main())
    finally:
        keep_exit_status()
