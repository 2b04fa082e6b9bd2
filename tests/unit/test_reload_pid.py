"""`publish --reload` signals only a fedfhe-inference server of the pid file's owner, never what a file names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedfhe_common.runtime.errors import FedfheError
from fedfhe_inference.api import reload_server as _reload

SERVER = """
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: open(sys.argv[1], "w").write("rescan"))
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def server(tmp_path: Path):
    """A process that looks like the server to /proc (argv ... fedfhe-inference serve) and records SIGHUP."""
    marker = tmp_path / "hup"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(marker), "fedfhe-inference", "serve"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc, marker
    proc.kill()
    proc.wait()


def _wait_for(path: Path, deadline_s: float = 10.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_the_running_server_is_signalled(tmp_path, server):
    proc, marker = server
    (tmp_path / "server.pid").write_text(f"{proc.pid}\n")
    assert _reload(tmp_path / "server.pid") == f"asked the server (pid {proc.pid}) to rescan"
    assert _wait_for(marker)


@pytest.mark.parametrize("text", ["-1", "1", "0", "12abc", ""])
def test_a_pid_that_is_not_a_servers_is_refused(tmp_path, text):
    (tmp_path / "server.pid").write_text(text)
    with pytest.raises(FedfheError, match="is not a server's pid"):
        _reload(tmp_path / "server.pid")


def test_another_process_is_not_signalled(tmp_path):
    """The pid of a process that is not the server (here: a sleep), planted by whoever can write the file."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "server.pid").write_text(str(other.pid))
        with pytest.raises(FedfheError, match="not a fedfhe-inference server"):
            _reload(tmp_path / "server.pid")
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_planted_link_or_fifo_is_refused(tmp_path, server):
    proc, marker = server
    (tmp_path / "real.pid").write_text(str(proc.pid))
    (tmp_path / "server.pid").symlink_to(tmp_path / "real.pid")
    with pytest.raises(FedfheError, match="cannot signal"):
        _reload(tmp_path / "server.pid")
    os.mkfifo(tmp_path / "fifo.pid")
    with pytest.raises(FedfheError, match="not a regular file"):
        _reload(tmp_path / "fifo.pid")
    assert not marker.exists()


def test_a_server_of_another_user_is_not_signalled(tmp_path, server):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the pid file another owner")
    proc, marker = server
    (tmp_path / "server.pid").write_text(str(proc.pid))
    os.chown(tmp_path / "server.pid", 65534, 65534)  # written by another uid than the server's
    with pytest.raises(FedfheError, match="run by the file's owner"):
        _reload(tmp_path / "server.pid")
    assert not marker.exists()
