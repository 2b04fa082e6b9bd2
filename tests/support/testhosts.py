"""Separate test hosts on one machine: network + mount + UTS namespaces, each with its own sshd.

Every host gets
  * its own network namespace with one veth on a bridge and one address in a
    private test subnet (10.77.0.0/24, used only inside the namespaces and on
    the bridge made here; IP forwarding stays off, so nothing leaves them);
  * its own mount namespace in which a private copy of /etc and private
    directories are bind-mounted over /opt, /srv, /var/lib/fedfhe,
    /var/log/fedfhe and /run/fedfhe, so one host's files are invisible to another;
  * its own hostname (UTS namespace);
  * its own sshd (root login with a generated key only, on its own address).
    Everything an ssh session starts (Ansible modules, the services they launch)
    inherits that host's namespaces.

The control node is this machine: the bridge carries 10.77.0.1 so that
ansible-playbook reaches the hosts over SSH, with host keys pinned in a
known_hosts file written here.

Usable from Python (the multihost test) and by hand::

    python tests/support/testhosts.py up      # build the hosts, print the inventory path
    python tests/support/testhosts.py status
    python tests/support/testhosts.py down    # remove everything (also after a crash)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "fhmh"  # every netns, link and directory made here carries it
BRIDGE = f"{PREFIX}-br0"
SUBNET = "10.77.0"
CONTROL_IP = f"{SUBNET}.1"
DEFAULT_BASE = Path(os.environ.get("FEDFHE_MULTIHOST_DIR", "/var/tmp/fedfhe-multihost"))
# host name -> last octet
DEFAULT_HOSTS = {"coordinator": 10, "inference-1": 11, "owner-0": 21, "owner-1": 22, "owner-2": 23}
# Private per host: path in the host -> backing directory name under the host's dir.
PRIVATE_DIRS = {
    "/opt": "opt",
    "/srv": "srv",
    "/var/lib/fedfhe": "var-lib-fedfhe",
    "/var/lib/fedfhe-release": "var-lib-fedfhe-release",
    "/var/log/fedfhe": "var-log-fedfhe",
    "/run/fedfhe": "run-fedfhe",
}
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class HostsUnavailable(RuntimeError):
    """This machine cannot build test hosts (no root, no netns, no sshd): tests skip."""


def _run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def wait_until(cond, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``cond`` until true (fedfhe_common.runtime.procs.wait_until when importable)."""
    try:
        from fedfhe_common.runtime.procs import wait_until as _wait
    except ImportError:  # the helper also runs from a bare python3
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from None
            time.sleep(interval)
        return
    _wait(cond, timeout, what, interval)


def check_capable() -> None:
    """Raise HostsUnavailable naming what is missing."""
    if os.geteuid() != 0:
        raise HostsUnavailable("needs root (network namespaces, bind mounts, sshd)")
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            raise HostsUnavailable(f"{tool} not installed (iproute2 / util-linux / openssh-client)")
    if not Path(SSHD).exists():
        raise HostsUnavailable("sshd not installed (apt-get install openssh-server)")
    probe = f"{PREFIX}-probe"
    _run(["ip", "netns", "del", probe], check=False)
    res = _run(["ip", "netns", "add", probe], check=False)
    if res.returncode != 0:
        raise HostsUnavailable(f"cannot create network namespaces: {res.stderr.strip()}")
    try:
        res = _run(["ip", "netns", "exec", probe, "unshare", "--mount", "--uts", "--propagation", "private",
                    "true"], check=False)
        if res.returncode != 0:
            raise HostsUnavailable(f"cannot create mount namespaces: {res.stderr.strip()}")
    finally:
        _run(["ip", "netns", "del", probe], check=False)


@dataclass
class Host:
    name: str
    ip: str
    dir: Path
    netns: str
    sshd: subprocess.Popen | None = None

    def path(self, inside: str) -> Path:
        """Where a path inside this host lies on the control node's disk (for checks)."""
        for mount, sub in sorted(PRIVATE_DIRS.items(), key=lambda kv: -len(kv[0])):
            if inside == mount or inside.startswith(mount + "/"):
                return self.dir / sub / inside[len(mount):].lstrip("/")
        if inside == "/etc" or inside.startswith("/etc/"):
            return self.dir / "etc" / inside[len("/etc"):].lstrip("/")
        raise ValueError(f"{inside} is not private to {self.name}")


@dataclass
class TestHosts:
    __test__ = False  # not a pytest test class
    base: Path = DEFAULT_BASE
    names: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_HOSTS))
    hosts: dict[str, Host] = field(default_factory=dict)
    # Control contexts (a control node each: its own SSH key) -> the hosts that key may log in to. The test's
    # own key (``key``, for its checks) logs in everywhere; with none given, so does everyone's.
    contexts: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.run_dir = self.base / "run"
        self.ssh_dir = self.run_dir / "ssh"
        self.key = self.ssh_dir / "id_ed25519"
        self.known_hosts = self.ssh_dir / "known_hosts"
        self._created_mountpoints: list[str] = []
        for name, octet in self.names.items():
            self.hosts[name] = Host(name, f"{SUBNET}.{octet}", self.run_dir / "hosts" / name, f"{PREFIX}-{name}")

    # ---- lifecycle ---------------------------------------------------------
    def up(self, timeout: float = 30, lock_timeout: float = 1800) -> TestHosts:
        check_capable()
        self._lock(lock_timeout)
        cleanup_leftovers(self.base)  # safe: whoever made them no longer holds the lock
        try:
            self._make_bridge()
            self._make_ssh_client_key()
            for host in self.hosts.values():
                self._make_netns(host)
                self._make_fs(host)
                self._make_sshd(host)
            for host in self.hosts.values():
                self._start_sshd(host)
            for host in self.hosts.values():
                wait_until(lambda h=host: self._ssh_ok(h), timeout, f"sshd on {host.name} ({host.ip})", 0.2)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for host in self.hosts.values():
            if host.sshd and host.sshd.poll() is None:
                host.sshd.terminate()
        cleanup_leftovers(self.base)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    _lock_fd: int | None = None

    def _lock(self, timeout: float) -> None:
        """One set of test hosts per machine: a second run waits for the first (the names,
        addresses and directories are fixed). The lock dies with its process."""
        self.base.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.base}.lock", os.O_RDWR | os.O_CREAT, 0o644)

        def acquired() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            wait_until(acquired, timeout, f"another multihost run to finish (lock {self.base}.lock)", 1.0)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def __enter__(self) -> TestHosts:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- building ----------------------------------------------------------
    def _make_bridge(self) -> None:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{CONTROL_IP}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])

    def context_key(self, context: str) -> Path:
        return self.ssh_dir / f"id_{context}"

    def _make_ssh_client_key(self) -> None:
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fedfhe-multihost-control", "-f", str(self.key)])
        for context in self.contexts:
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fedfhe-multihost-{context}", "-f",
                  str(self.context_key(context))])

    def _make_netns(self, host: Host) -> None:
        veth = f"{PREFIX}-v{host.ip.rsplit('.', 1)[1]}"
        _run(["ip", "netns", "add", host.netns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        _run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0"])
        _run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])

    def _make_fs(self, host: Host) -> None:
        host.dir.mkdir(parents=True, exist_ok=True)
        # A private /etc: users, hostname, sshd config and /etc/fedfhe belong to this host alone.
        _run(["cp", "-a", "/etc", str(host.dir / "etc")])
        etc = host.dir / "etc"
        shutil.rmtree(etc / "fedfhe", ignore_errors=True)
        (etc / "hostname").write_text(host.name + "\n")
        lines = ["127.0.0.1 localhost", f"{host.ip} {host.name}"]
        lines += [f"{h.ip} {h.name}" for h in self.hosts.values() if h is not host]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        for sub in PRIVATE_DIRS.values():
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        for mount in PRIVATE_DIRS:
            if not Path(mount).exists():
                Path(mount).mkdir(parents=True)
                if mount not in self._created_mountpoints:
                    self._created_mountpoints.append(mount)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "mountpoints.json").write_text(json.dumps(self._created_mountpoints))

    def _make_sshd(self, host: Host) -> None:
        ssh = host.dir / "etc" / "ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        for old in ssh.glob("ssh_host_*"):
            old.unlink()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(ssh / "ssh_host_ed25519_key")])
        keys = [self.key] + [self.context_key(c) for c, names in self.contexts.items() if host.name in names]
        (ssh / "authorized_keys_root").write_text("".join(k.with_suffix(".pub").read_text() for k in keys))
        os.chmod(ssh / "authorized_keys_root", 0o600)
        (ssh / "sshd_config").write_text(
            "\n".join([
                f"ListenAddress {host.ip}",
                "Port 22",
                "HostKey /etc/ssh/ssh_host_ed25519_key",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "AuthorizedKeysFile /etc/ssh/authorized_keys_%u",
                "PidFile none",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "Subsystem sftp internal-sftp",
                "",
            ])
        )
        pub = (ssh / "ssh_host_ed25519_key.pub").read_text().split()
        with self.known_hosts.open("a") as fh:
            fh.write(f"{host.ip} {pub[0]} {pub[1]}\n")

    def _start_sshd(self, host: Host) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        binds = [f"mount --bind {host.dir / 'etc'} /etc"]
        binds += [f"mount --bind {host.dir / sub} {mount}" for mount, sub in PRIVATE_DIRS.items()]
        script = "\n".join(["set -e", f"hostname {host.name}", *binds, f"exec {SSHD} -D -e -f /etc/ssh/sshd_config"])
        log = open(host.dir / "sshd.log", "ab")  # noqa: SIM115 - the child owns it
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
             "--", "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def _ssh_ok(self, host: Host) -> bool:
        if host.sshd and host.sshd.poll() is not None:
            raise RuntimeError(f"sshd on {host.name} exited {host.sshd.returncode}: "
                               f"{(host.dir / 'sshd.log').read_text(errors='replace')[-1500:]}")
        return self.ssh(host.name, "true", check=False, timeout=5).returncode == 0

    # ---- using -------------------------------------------------------------
    def ssh_args(self, context: str | None = None) -> list[str]:
        """ssh's options with the test's key, or with a control context's (``contexts``)."""
        key = self.key if context is None else self.context_key(context)
        return [
            "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5",
        ]

    def ssh(self, name: str, command: str, check: bool = True, timeout: float = 120,
            context: str | None = None) -> subprocess.CompletedProcess[str]:
        host = self.hosts[name]
        try:
            return _run(["ssh", *self.ssh_args(context), f"root@{host.ip}", command], check=check, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise
            return subprocess.CompletedProcess([], 124, "", "timeout")

    def netns_exec(self, name: str, argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
        """Run in the host's network namespace only (its files are not visible): a network probe."""
        return _run(["ip", "netns", "exec", self.hosts[name].netns, *argv], **kw)


# ---- cleanup (also of a previous crashed run) --------------------------------
def _netns_list() -> list[str]:
    res = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.startswith(f"{PREFIX}-")]


def _netns_pids(ns: str) -> list[int]:
    res = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def cleanup_leftovers(base: Path = DEFAULT_BASE, timeout: float = 20) -> None:
    """Kill every process in our namespaces, delete namespaces, bridge, mount points and host dirs."""
    namespaces = _netns_list()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for ns in namespaces:
            for pid in _netns_pids(ns):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        try:
            wait_until(lambda: not any(_netns_pids(ns) for ns in namespaces), timeout if sig == signal.SIGTERM else 10,
                       "processes in the test namespaces to exit", 0.2)
            break
        except TimeoutError:
            continue
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
    if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        _run(["ip", "link", "del", BRIDGE], check=False)
    run_dir = Path(base) / "run"
    created = run_dir / "mountpoints.json"
    if created.exists():
        for mount in json.loads(created.read_text() or "[]"):
            try:
                Path(mount).rmdir()  # only if still empty: never remove anything real
            except OSError:
                pass
    shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    hosts = TestHosts()
    if cmd == "up":
        hosts.up()
        for h in hosts.hosts.values():
            print(f"{h.name:12} {h.ip:12} netns {h.netns}  files {h.dir}")
        print(f"ssh {' '.join(hosts.ssh_args())} root@{SUBNET}.10")
        # The sshd processes outlive this command: they run in their own sessions.
        return 0
    if cmd == "down":
        cleanup_leftovers(hosts.base)
        return 0
    for ns in _netns_list():
        print(ns, _netns_pids(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
