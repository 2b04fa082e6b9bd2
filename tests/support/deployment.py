"""The multihost test's deployment: owners' data files, the Ansible inventory, running playbooks.

Also usable by hand on hosts built with ``testhosts.py up``::

    python tests/support/deployment.py prepare      # data + inventory, prints the inventory path
    python tests/support/deployment.py play site.yml [ansible-playbook args...]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent

from testhosts import DEFAULT_BASE, TestHosts  # noqa: E402

REPO = HERE.parent.parent
ANSIBLE_DIR = REPO / "deploy" / "ansible"
VENV_BIN = Path(sys.executable).parent
# Kept between runs (a rebuild only when the fedfhe sources change; the uv cache makes
# installs after the first cheap): wheelhouse and uv cache of the control node.
CACHE = Path(os.environ.get("FEDFHE_MULTIHOST_CACHE", str(DEFAULT_BASE) + "-cache"))
OWNERS = ["owner-0", "owner-1", "owner-2"]
# Each owner holds a different number of rows, so the run's counts show whose file was read.
OWNER_ROWS = {"owner-0": 420, "owner-1": 300, "owner-2": 180}
DATA_PATH = "/srv/fedfhe/owner.npz"  # the same path on every owner host, a different file on each
PUBLIC_TEST = "/srv/fedfhe/public-test.npz"  # on the coordinator: public rows for per-round scores
ROUNDS = 2
SECOND_NODE = "inference-1"  # the second inference node's host (testhosts.DEFAULT_HOSTS)


@dataclass
class PlayResult:
    rc: int
    output: str
    seconds: float
    log: Path

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counters per host."""
        out: dict[str, dict[str, int]] = {}
        for line in self.output.split("PLAY RECAP", 1)[-1].splitlines():
            m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
            if m:
                out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return out

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])


UV_CACHE_LIMIT = 16 << 30  # a shared uv cache past this (old builds piling up) is dropped


def drop_torn_wheel_entries(cache: Path) -> list[Path]:
    """Remove wheel entries whose two pointers disagree; returns the ``.rev`` files removed.

    A wheel from --find-links is cached as a symlink to its unpacked archive plus a ``.rev``
    file naming that archive. When two hosts unpack the same wheel at once (the test hosts
    share this cache), one host's symlink and the other's ``.rev`` can survive: both archives
    exist until ``uv cache prune``, which follows the symlink and deletes the archive only the
    ``.rev`` names; every later install of that wheel then fails with "failed to read
    directory .../archive-v0/<id>" (uv 0.11.33; CI went red on websockets this way). A removed
    entry costs one unpack from the wheelhouse on the next install.
    """
    removed = []
    for rev in sorted(cache.glob("wheels-v*/**/*.rev")):
        link = rev.with_suffix("")
        target = link.resolve() if link.is_symlink() else None
        sound = (target is not None and target.is_dir() and target.parent.name.startswith("archive-v")
                 and target.name.encode() in rev.read_bytes())
        if not sound:
            rev.unlink()
            if link.is_symlink():
                link.unlink()
            removed.append(rev)
    return removed


def trim_uv_cache() -> None:
    """Keep the shared uv cache sound and from growing run after run.

    Hosts installing at the same time from a cold cache each unpack the same wheels; uv keeps
    one copy and leaves the others unreachable: ``uv cache prune`` drops them (measured:
    25 GB -> 6 GB after a cold run), once the entries the race tore are gone. Past the size
    limit the cache starts afresh.
    """
    cache = CACHE / "uv-cache"
    if not cache.is_dir():
        return
    drop_torn_wheel_entries(cache)
    subprocess.run([str(VENV_BIN / "uv"), "cache", "prune", "--cache-dir", str(cache)], capture_output=True)
    res = subprocess.run(["du", "-sb", str(cache)], capture_output=True, text=True)
    if res.returncode == 0 and int(res.stdout.split()[0]) > UV_CACHE_LIMIT:
        shutil.rmtree(cache, ignore_errors=True)


def place_data(hosts: TestHosts, work: Path) -> dict[str, int]:
    """Write each owner's rows on its own host only, and a public test set on the coordinator."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(VENV_BIN / "fedfhe-partition"), "--dataset", "digits", "--owners", str(len(OWNERS)),
         "--out", str(work / "partition")],
        check=True, capture_output=True, text=True,
    )
    rows = {}
    for i, owner in enumerate(OWNERS):
        with np.load(work / "partition" / f"owner-{i}.npz", allow_pickle=False) as npz:
            X, y = npz["X"][: OWNER_ROWS[owner]], npz["y"][: OWNER_ROWS[owner]]
        dest = hosts.hosts[owner].path(DATA_PATH)
        dest.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(dest, X=X, y=y)
        os.chmod(dest, 0o644)
        rows[owner] = len(y)
    public = hosts.hosts["coordinator"].path(PUBLIC_TEST)
    public.parent.mkdir(parents=True, exist_ok=True)
    public.write_bytes((work / "partition" / "public-test.npz").read_bytes())
    return rows


PACKAGES = ("common", "proto", "server", "client", "inference")


def snapshot_sources(work: Path) -> Path:
    """Deploy a frozen copy of the fedfhe packages: edits made while the test runs cannot
    change what is deployed between two playbook runs."""
    dest = work / "src"
    shutil.rmtree(dest, ignore_errors=True)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", "*.pyc"))
    return dest


def _common_vars(hosts: TestHosts, source: Path, control: Path, context: str | None) -> dict:
    """The settings every control context's inventory has: its SSH key, its control dir, the caches."""
    return {
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": str(hosts.key if context is None else hosts.context_key(context)),
        "ansible_ssh_common_args": " ".join(hosts.ssh_args(context)),
        "fedfhe_control_dir": str(control),
        "fedfhe_source_dir": str(source),
        "fedfhe_wheelhouse_dir": str(CACHE / "wheelhouse"),
        "fedfhe_wheelhouse_copy": False,
        "fedfhe_wheelhouse_remote_dir": str(CACHE / "wheelhouse"),
        # One uv cache for all test hosts (they share this disk); symlinks, since
        # hardlinks cannot cross the hosts' private mounts.
        "fedfhe_uv_cache_dir": str(CACHE / "uv-cache"),
        "fedfhe_uv_link_mode": "symlink",
        "fedfhe_schema": "digits",
    }


def write_owner_inventory(hosts: TestHosts, work: Path, owner: str, context: str, superlink: str, inference: str,
                          approved_app: str) -> Path:
    """Mode 2 (owner.yml): the owner organisation's own inventory, control dir and SSH key; its host only.

    The consortium's addresses and the app digest the owner computed itself are its group vars."""
    control = work / f"{owner}-org"
    inventory = {"all": {
        "vars": {**_common_vars(hosts, work / "src", control / "control", context),  # write_inventory's snapshot
                 "fedfhe_owner_superlink_address": superlink, "fedfhe_owner_inference_address": inference,
                 "fedfhe_owner_approve_shipped_app": False, "fedfhe_owner_approved_flower_apps": [approved_app]},
        "children": {"supernodes": {"hosts": {owner: {"ansible_host": hosts.hosts[owner].ip,
                                                      "fedfhe_owner_data": DATA_PATH}}}},
    }}
    path = control / "inventory" / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def write_inventory(hosts: TestHosts, work: Path, copy_wheelhouse: list[str] | None = None,
                    context: str | None = None, external_owners: list[str] | None = None) -> Path:
    """An inventory like an operator's, plus the test's SSH settings and cache locations.

    ``copy_wheelhouse`` names hosts that get the wheelhouse copied over SSH (the default for
    real hosts, with uv's cache private to the host); the others read the control node's
    wheelhouse where it lies, as hosts would from a shared disk, and share one uv cache, since
    the test hosts share this machine's /var/tmp. ``context``: the control context whose SSH key
    the inventory uses (testhosts.TestHosts.contexts; None: the test's own). ``external_owners``:
    owners that deploy their own hosts (owner.yml), so in no group here (fedfhe_external_owners).
    """
    copy_wheelhouse = copy_wheelhouse or []
    external = external_owners or []

    def host(name: str, **extra: object) -> dict:
        h = {"ansible_host": hosts.hosts[name].ip, **extra}
        if name in copy_wheelhouse:  # exactly the real hosts' defaults: own copy, own cache, hardlinks
            h.update({"fedfhe_wheelhouse_copy": True, "fedfhe_wheelhouse_remote_dir": "/opt/fedfhe/wheelhouse",
                      "fedfhe_uv_cache_dir": "/opt/fedfhe/cache/uv", "fedfhe_uv_link_mode": "hardlink"})
        return h

    inventory = {
        "all": {
            "vars": {**_common_vars(hosts, snapshot_sources(work), work / "control", context),
                     **({"fedfhe_external_owners": external} if external else {})},
            "children": {
                "superlink": {"hosts": {"coordinator": host(
                    "coordinator", fedfhe_training_rounds=ROUNDS, fedfhe_training_public_test=PUBLIC_TEST,
                    fedfhe_training_round_timeout_s=120, fedfhe_training_wait_for_nodes_s=120)}},
                "supernodes": {"hosts": {o: host(o, fedfhe_owner_data=DATA_PATH) for o in OWNERS if o not in external}},
                # Two inference nodes (issue 29): the first on the coordinator's host, as the example inventory
                # (co-located, own users), the second on a host of its own; owners spread calls over both.
                "inference": {"hosts": {"coordinator": {}, SECOND_NODE: host(SECOND_NODE)}},
                # Their shared key registry (PostgreSQL) on the coordinator's host too.
                "key_registry": {"hosts": {"coordinator": {}}},
            },
        }
    }
    inv_dir = work / "inventory"
    inv_dir.mkdir(parents=True, exist_ok=True)
    path = inv_dir / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def play(playbook: str, inventory: Path, log_dir: Path, *args: str, timeout: float = 1800) -> PlayResult:
    """Run the real ansible-playbook (over SSH to the test hosts); output goes to a log too."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # A private ControlPath dir: no clash with another run's multiplexed connections.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(log_dir / "cp"),
        "ANSIBLE_LOCAL_TEMP": str(log_dir / "tmp"),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(playbook).stem + ("-check" if "--check" in args else "")
    n = len([p for p in log_dir.glob(f"{stem}*.log") if re.fullmatch(rf"{re.escape(stem)}(-\d+)?\.log", p.name)])
    log = log_dir / f"{stem}{'-' + str(n) if n else ''}.log"
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), playbook, *args],
        cwd=ANSIBLE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    ) as proc, log.open("w") as fh:
        assert proc.stdout is not None
        for line in proc.stdout:  # timestamped log: where the time goes
            lines.append(line)
            fh.write(f"[{time.monotonic() - started:7.1f}s] {line}")
            fh.flush()
            if time.monotonic() - started > timeout:
                proc.kill()
                raise TimeoutError(f"ansible-playbook {playbook} ran over {timeout:.0f}s; log {log}")
        proc.wait()
    output = "".join(lines)
    return PlayResult(proc.returncode, output, time.monotonic() - started, log)


def main(argv: list[str]) -> int:
    hosts = TestHosts()
    work = hosts.run_dir / "work"
    if argv[0] == "prepare":
        print(json.dumps(place_data(hosts, work)))
        print(write_inventory(hosts, work))
        return 0
    if argv[0] == "play":
        res = play(argv[1], work / "inventory" / "hosts.yml", work / "logs", *argv[2:])
        print(res.log.read_text())
        print(f"rc={res.rc} in {res.seconds:.1f}s; log {res.log}")
        return res.rc
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
