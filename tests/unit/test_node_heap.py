"""The node's process keeps its heap (glibc mallopt at start-up) unless the operator set malloc tunables."""

from __future__ import annotations

import os
import subprocess
import sys

CALL = "from fedfhe_inference.server import keep_heap; print(keep_heap())"


def _keep_heap(tunables: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    return subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_the_node_keeps_its_heap_on_glibc():
    assert _keep_heap(None) == "True"


def test_an_operators_malloc_tunables_win():
    assert _keep_heap("glibc.malloc.arena_max=2") == "False"
