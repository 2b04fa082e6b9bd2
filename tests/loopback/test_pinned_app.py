"""A hostile Flower App submitted to the SuperLink: every SuperNode refuses it before any of its code runs.

The FAB ships its own ``fedfhe_owner/clientapp/client_app.py``. Under Flower's stock
``flwr-clientapp`` the FAB's folder goes first on ``sys.path``, so that module
would shadow the installed one: on import it leaves a marker and reads the
owners' data files. The test proves, on the shared loopback federation
(conftest.py), that no SuperNode imported it (no marker), that no process opened
a data file during the run (an inotify watch, checked live afterwards), and that
the coordinator's progress.jsonl names each owner's refusal and its reason. A
control then runs Flower's own loading path on the same FAB bytes and sees the
marker and the reads: the hostile input is real.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from fedfhe_common.pki.app_approval import fab_digest
from fedfhe_common.runtime.procs import venv_bin
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.train import flwr_cli
from fedfhe_coordinator.train.training import failure_reason, read_progress
from fedfhe_testbed.cluster import fedfhe_app_digest

pytestmark = pytest.mark.timeout(600)
REFUSING = ["owner-0", "owner-1", "owner-2", "owner-bad"]  # every registered, connected SuperNode
IN_ACCESS, IN_OPEN = 0x1, 0x20
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class OpenWatch:
    """inotify on files: every open or read of them by any process on this host is recorded."""

    def __init__(self, paths: list[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.names: dict[int, str] = {}
        for path in paths:
            wd = libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN | IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
            self.names[wd] = path.name

    def events(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            offset = 0
            while offset < len(buf):
                wd, mask, _cookie, length = struct.unpack_from("iIII", buf, offset)
                out.append((self.names.get(wd, "?"), mask))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def hostile_app(folder: Path, marker_dir: Path, data_files: list[Path]) -> Path:
    """fedfhe's own pyproject (same app id and version) plus a shadowing fedfhe_owner package.

    The shadowing module is the one the pyproject names as the ClientApp, wherever the package keeps it.
    """
    folder.mkdir(parents=True)
    pyproject = (flwr_cli.flower_app_dir() / "pyproject.toml").read_text()
    (folder / "pyproject.toml").write_text(pyproject)
    module = tomllib.loads(pyproject)["tool"]["flwr"]["app"]["components"]["clientapp"].partition(":")[0]
    *packages, leaf = module.split(".")
    pkg = folder.joinpath(*packages)
    pkg.mkdir(parents=True)
    for depth in range(1, len(packages) + 1):
        (folder.joinpath(*packages[:depth]) / "__init__.py").write_text("")
    (pkg / f"{leaf}.py").write_text(textwrap.dedent(f"""\
        # Hostile: runs at import, in place of the installed {module}.
        import os
        from pathlib import Path

        from flwr.clientapp import ClientApp

        MARKERS = Path({str(marker_dir)!r})
        MARKERS.mkdir(parents=True, exist_ok=True)
        (MARKERS / f"imported-{{os.getpid()}}").write_text("the FAB's code ran")
        stolen = 0
        for name in {[str(p) for p in data_files]!r}:
            with open(name, "rb") as fh:
                stolen += len(fh.read())
        (MARKERS / f"read-{{os.getpid()}}").write_text(str(stolen))
        app = ClientApp()
        """))
    return folder


def submit(cfg, app: Path, log: Path, timeout: float = 300) -> int:
    """`flwr run APP` against the coordinator, as `fedfhe-coordinator train` does for fedfhe's own app."""
    run_config = flwr_cli.write_run_config(cfg, RunConfig.from_coordinator(cfg, {"num-server-rounds": 1}))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [venv_bin("flwr"), "run", str(app), flwr_cli.CONNECTION, "--stream", "--run-config", str(run_config)],
            env=flwr_cli.flwr_env(cfg), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


FLOWER_LOADS_IT = """
import hashlib, sys
from pathlib import Path
from flwr.cli.install import install_from_fab
from flwr.clientapp.utils import get_load_client_app_fn
fab = Path(sys.argv[1]).read_bytes()
# What Flower 1.39's flwr-clientapp does with a pulled FAB (run_clientapp.py).
install_from_fab(fab, skip_prompt=True)
get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
    "fedfhe/fedfhe", "0.1.0", hashlib.sha256(fab).hexdigest())
"""


def test_every_supernode_refuses_a_shadowing_app_before_it_runs(fed, first_run, tmp_path):
    from flwr.cli.build import build_fab_from_disk

    cfg, cluster = fed["cfg"], fed["cluster"]
    data_files = sorted(fed["data"].glob("owner-*.npz")) + [fed["data"] / "bad.csv"]
    markers = tmp_path / "markers"
    app = hostile_app(tmp_path / "hostile-app", markers, data_files)
    fab = build_fab_from_disk(app)  # the very bytes `flwr run` ships (deterministic build)
    digest = fab_digest(fab)
    assert digest != fedfhe_app_digest()

    watch = OpenWatch(data_files)
    try:
        submit(cfg, app, tmp_path / "flwr-run.log")  # `flwr run --stream` exits 0 even when the ServerApp fails
        opened = watch.events()
        # The watch is live: a read by this test is seen.
        data_files[0].read_bytes()
        assert any(name == data_files[0].name for name, _ in watch.events()), "inotify saw no open: watch broken"
    finally:
        watch.close()

    log = (tmp_path / "flwr-run.log").read_text(errors="replace")
    assert not markers.exists(), f"the hostile ClientApp was imported: {sorted(os.listdir(markers))}"
    assert opened == [], f"a data file was opened during the hostile run: {opened}"

    rows = read_progress(cfg.training.output_dir / "progress.jsonl")
    assert len(rows) == 1 and rows[0]["fit_nodes"] == 0, rows
    failures = rows[0]["failures"]
    refused = {f["reason"].split(" refused the Flower App: ")[0]: f["reason"] for f in failures}
    assert sorted(refused) == REFUSING, failures
    for reason in refused.values():
        assert f"Flower App {digest} is not approved here" in reason, reason
    # The operator's terminal: `fedfhe-coordinator train` prints the run's error with each owner's reason.
    assert "refused the Flower App" in rows[0]["error"] and "refused the Flower App" in failure_reason(log)

    for owner in REFUSING:
        proc = next(p for p in cluster.procs if p.name == f"supernode-{owner}")
        assert proc.popen.poll() is None, f"{owner}'s SuperNode died"
        assert f"{owner} refused the Flower App" in proc.log.read_text(errors="replace")

    # Control: Flower's own loading path on the same bytes imports the shadowing module and reads the rows.
    home = tmp_path / "flwr-home"
    res = subprocess.run([venv_bin("python"), "-c", FLOWER_LOADS_IT, str(_write(tmp_path / "app.fab", fab))],
                         env={**os.environ, "FLWR_HOME": str(home)}, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name.split("-")[0] for p in markers.iterdir()) == ["imported", "read"]
    assert int(next(markers.glob("read-*")).read_text()) == sum(p.stat().st_size for p in data_files)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
