"""torch's "No CUDA runtime is found" line stays out of the node's stderr, where --log-format json records go.

Issue 28: on a host with a CUDA toolkit but no GPU, importing Concrete ML (torch.utils.cpp_extension) printed
a bare text line among the JSON records, in the node and in each FHE worker (whose stderr is the node's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedfhe_common.runtime.logs import CUDA_NOTICE
from fedfhe_inference.sandbox import SandboxPool

pytestmark = pytest.mark.timeout(300)


def test_torch_is_imported_with_its_notice_captured_not_printed(tmp_path):
    code = ("import json, torch.cuda\n"
            "from fedfhe_common.runtime.logs import import_quietly\n"
            "lines = import_quietly('torch.utils.cpp_extension')\n"
            "import torch.utils.cpp_extension\n"
            "print(json.dumps({'lines': lines, 'gpu': torch.cuda.is_available()}))\n")
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}  # a toolkit here: torch prints its notice unless a GPU runs
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert CUDA_NOTICE not in done.stderr
    out = json.loads(done.stdout)
    if not out["gpu"]:
        assert any(line.startswith(CUDA_NOTICE) for line in out["lines"]), out


def test_an_fhe_worker_does_not_print_the_notice_on_the_nodes_stderr(capfd, monkeypatch):
    from fedfhe_inference import sandbox

    clean = sandbox.worker_env
    # The worker's clean environment drops PYTHONPATH: keep it, so the worker runs this checkout's code.
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setattr(sandbox, "worker_env", lambda tmp: {**clean(tmp), "PYTHONPATH": path})
    pool = SandboxPool(1, 8192 << 20, 0, 60, readable=None)
    try:
        pool.call([b"probe", b"/nonexistent", b"127.0.0.1", b"1"], timeout=240)  # answered once Concrete is in
    finally:
        pool.shutdown()
    assert CUDA_NOTICE not in capfd.readouterr().err
