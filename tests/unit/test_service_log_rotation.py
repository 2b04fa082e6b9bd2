"""The fedfhe-service supervisor (hosts without systemd) rotates a service's log by size (issue 15).

Runs the role's real supervisor script once, unprivileged, on a service that prints numbered lines and
exits (``restart: no``, so the supervisor ends too): the log must have rotated past ``log_max_bytes``,
keep ``log_backups`` older files and no more, and hold the newest lines whole and in order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from fedfhe_common.runtime.procs import wait_until

SUPERVISOR = Path(__file__).resolve().parents[2] / "deploy/ansible/roles/fedfhe_service/files/fedfhe-service"
LINES = 400
PRINTER = f"for i in range({LINES}): print(f'line {{i:05d}} ' + 'x' * 80, flush=True)"


def supervisor(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SUPERVISOR), "--services-dir", str(tmp_path / "services"),
                           "--run-dir", str(tmp_path / "run"), *args], capture_output=True, text=True, timeout=30,
                          check=False)


def test_the_supervisor_rotates_a_log_past_its_size_limit(tmp_path):
    log = tmp_path / "log" / "printer.log"
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "printer.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", PRINTER], "workdir": str(tmp_path), "log": str(log),
        "log_max_bytes": 4096, "log_backups": 2, "restart": "no",
    }))
    assert supervisor(tmp_path, "start", "printer").returncode == 0
    wait_until(lambda: supervisor(tmp_path, "status", "printer").returncode == 3, 30, "the supervisor to end")
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["printer.log", "printer.log.1", "printer.log.2"], files  # 400 lines x 87 B = 34 kB: rotated
    assert all((log.parent / f).stat().st_size <= 4096 for f in files)
    kept = "".join((log.parent / f).read_text() for f in reversed(files))  # oldest first
    numbers = [int(m) for m in re.findall(r"^line (\d{5}) x{80}$", kept, re.M)]
    assert numbers == list(range(numbers[0], LINES)) and numbers[0] > 0  # whole lines, in order, the oldest gone
    assert not [line for line in kept.splitlines() if not line.startswith(("line ", "20"))]  # nothing torn
    # Its own lines go to the same files. Its "printer: pid" line races the child's 400 lines, and so does its
    # exit line: the relay thread may still be copying the pipe's backlog when the child's exit is logged, and
    # that backlog can rotate the exit line into printer.log.1. Only the oldest file can lose it.
    assert "exited with 0" in kept
