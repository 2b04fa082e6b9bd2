"""Helpers for the fault tests: a federation on loopback, run training in the background, act on a SuperNode's log."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedfhe_common.runtime.procs import wait_until


class Background:
    """Run ``fn`` in a thread; ``result()`` returns its value or raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> Any:
        wait_until(self.done, timeout, "the training run to return")
        if self._error is not None:
            raise self._error
        return self._value


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def count_after(path: Path, offset: int, needle: str) -> int:
    """How often ``needle`` occurs in the log written after byte ``offset``."""
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace").count(needle)


RECEIVED_TRAIN = "Receiving: train message"


def kill_on_nth_train_message(cluster: Any, proc: Any, nth: int, offset: int, timeout: float,
                              guard: Background | None = None) -> None:
    """SIGKILL ``proc`` (its whole process group) once it has received its ``nth`` train message.

    The SuperNode logs the receipt before it starts the ClientApp process, so
    the kill lands while that round waits for this node's reply. ``guard``: the
    training run, whose early end (e.g. an error) stops the wait.
    """

    def reached() -> bool:
        if guard is not None and guard.done():
            guard.result(0)  # raises the run's error
            raise AssertionError("the run ended before the SuperNode got its train message")
        return count_after(proc.log, offset, RECEIVED_TRAIN) >= nth

    wait_until(reached, timeout, f"{proc.name} to receive train message {nth}", interval=0.05)
    cluster.stop(proc, signal.SIGKILL)


def reap_group(proc: Any) -> None:
    """SIGKILL what is left of a process group whose leader has exited.

    A flower-supernode that exits with an error (e.g. 305) can leave its
    flower-superexec child retrying; Cluster.stop only signals live leaders.
    """
    import os

    if proc.popen.poll() is not None:
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def supernode_id(path: Path, offset: int = 0) -> int | None:
    """The node id a SuperNode logged after ``offset`` ("SuperNode ID: N"), once it is connected."""
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    marker = "SuperNode ID: "
    at = text.rfind(marker)
    if at < 0:
        return None
    digits = text[at + len(marker):].split(maxsplit=1)
    return int(digits[0]) if digits and digits[0].isdigit() else None


@contextmanager
def digits_federation(work: Path, owners: list[str], **training: Any) -> Iterator[dict[str, Any]]:
    """A SuperLink and one connected SuperNode per owner (IID digits partitions) in a Cluster in ``work``.

    Yields cluster, cfg_path, cfg (the coordinator config), superlink (its Proc), owner_cfgs and
    nodes (owner -> SuperNode Proc); ``training`` goes to the coordinator config. Everything is
    stopped on exit, leftover process groups included.
    """
    from fedfhe_coordinator import config as coord
    from fedfhe_testbed.cluster import Cluster
    from fedfhe_testbed.partition_cli import write_partitions

    data = work / "data"
    write_partitions("digits", len(owners), data, scheme="iid", seed=0)
    with Cluster(work, secure=False) as c:
        try:
            c.make_pki(owners)
            cfg_path = c.coordinator_config(owners, **training)
            superlink = c.start_superlink(cfg_path)
            c.register(cfg_path)
            owner_cfgs = {o: c.owner_config(o, data / f"owner-{i}.npz") for i, o in enumerate(owners)}
            nodes = {o: c.start_supernode(o, owner_cfgs[o]) for o in owners}
            for proc in nodes.values():
                # _alive raises with the log's tail if the SuperNode exited
                wait_until(lambda p=proc: c._alive(p) and supernode_id(p.log) is not None, 120,
                           f"{proc.name} to connect")
            yield {"cluster": c, "cfg_path": cfg_path, "cfg": coord.load(cfg_path), "superlink": superlink,
                   "owner_cfgs": owner_cfgs, "nodes": nodes}
        finally:
            for proc in list(c.procs):
                reap_group(proc)
