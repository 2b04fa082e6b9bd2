"""Confine an FHE worker before it reads an owner's byte: no network, and only the files its jobs need.

Concrete's C++ runtime parses owners' keys and ciphertexts and runs circuits compiled from a bundle; if
any of that is ever turned into code execution, the code runs here. So a worker, once started:

- gets its own network namespace inside its own user namespace (``unshare``): no interface but a
  loopback that is down, so no address, TCP or UDP, reaches anything, and no capability outside;
- is held by Landlock (Linux >= 5.13) to reading the Python install, the system libraries and the
  directories the node names (the verified bundle copies, the owners' evaluation keys), to writing only
  its private temporary directory, and (Landlock ABI >= 4) to no TCP bind or connect at all. The node's
  TLS key, its config, other state and every other path are out of reach;
- sets ``no_new_privs``: nothing it executes can gain privileges.

A separate uid would need the node to start as root; the node runs as its service user, and Landlock
plus the namespace give the worker less than another uid would (a uid can still read world-readable
files and reach the network). Evaluation keys are public material; a worker reads every owner's,
since it caches keys of several owners.

ctypes on the raw syscalls: the standard library has no Landlock binding and Python 3.11 no
``os.unshare``. The structures follow <linux/landlock.h>.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # every arch
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000

# LANDLOCK_ACCESS_FS_*: the rights each ABI version knows.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = (
    1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12)
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | REFER | TRUNCATE
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may hold

# What any Python process with Concrete needs to read, beyond its own install: shared libraries, the loader's
# cache, CPU topology and limits (OpenMP sizes its pool from them) and its own /proc entry (/proc/self is
# resolved when the rule is made: the worker's own pid, never the node's environ or memory).
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime", "/proc/self", "/proc/cpuinfo",
               "/proc/meminfo", "/proc/stat", "/sys/devices/system/cpu", "/sys/fs/cgroup", "/dev/null",
               "/dev/urandom", "/dev/zero")
# Libraries open /dev/null for writing at import (dill, which torch imports); LLVM's OpenMP runtime registers
# itself in a file under /dev/shm (or /tmp) when it starts.
SYSTEM_WRITE = ("/dev/null", "/dev/shm")


class ConfinementError(RuntimeError):
    """The kernel refused a part of the confinement; the worker must not serve."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass
class Confinement:
    """What was applied, for the node's log and its self-check."""

    network_namespace: bool = False
    landlock_abi: int = 0
    tcp_denied: bool = False
    readable: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        tcp = ", TCP denied" if self.tcp_denied else ""
        return (f"own network namespace, Landlock ABI {self.landlock_abi}{tcp}, "
                f"{len(self.readable)} readable and {len(self.writable)} writable tree(s)")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> ConfinementError:
    errno = ctypes.get_errno()
    return ConfinementError(f"{what}: {os.strerror(errno)} (errno {errno})")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled at boot)."""
    version = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                              ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, int(version))


def own_network_namespace() -> None:
    """A fresh network namespace inside a fresh user namespace: nothing outside is reachable, and a worker of a
    node run as root keeps no capability outside it (the same path, root or not)."""
    if _libc().unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNET)) != 0:
        raise _fail("unshare(CLONE_NEWNET) for the FHE worker (unprivileged user namespaces disabled? "
                    "kernel.unprivileged_userns_clone / user.max_user_namespaces)")


PACKAGES = ("fedfhe_common", "fedfhe_inference", "fedfhe_proto")  # what a worker imports from fedfhe


def python_trees() -> list[str]:
    """The interpreter, its standard library, the venv and fedfhe's packages (an editable install keeps them
    outside the venv), found without importing them; never the current directory."""
    trees = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    trees.update(p for p in sys.path if p and os.path.isabs(p) and os.path.exists(p))
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            trees.add(os.path.dirname(os.path.realpath(location)))
    cwd = os.getcwd()
    return sorted(t for t in trees if t not in ("/", cwd) and os.path.exists(t))


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not Path(path).is_dir():
            access &= FILE_RIGHTS
        rule = _PathBeneath(allowed_access=access, parent_fd=fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise _fail(f"landlock_add_rule({path})")
        return True
    finally:
        os.close(fd)


def restrict_files(readable: list[str], writable: list[str]) -> Confinement:
    """Landlock: read (and execute) beneath ``readable``, read and write beneath ``writable``, nothing else."""
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementError("the kernel has no Landlock (Linux >= 5.13 with landlock in the lsm= list)")
    libc = _libc()
    handled = FS_BY_ABI.get(abi, FS_BY_ABI[5])
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    attr = _RulesetAttr(handled_access_fs=handled, handled_access_net=net)
    size = ctypes.sizeof(attr) if abi >= 4 else ctypes.sizeof(ctypes.c_uint64)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _fail("landlock_create_ruleset")
    done = Confinement(landlock_abi=abi, tcp_denied=bool(net))
    try:
        for path in readable:
            if _add_rule(libc, ruleset, path, READ & handled):
                done.readable.append(path)
        for path in writable:
            if _add_rule(libc, ruleset, path, WRITE & handled):
                done.writable.append(path)
        if libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) != 0:
            raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return done


def confine(readable: list[str], writable: list[str]) -> Confinement:
    """Both parts, network first (``unshare`` needs no file access, Landlock forbids nothing it needs).

    Call it while the process has one thread: entering a user namespace needs that, and Landlock confines
    only the calling thread and the threads started after it.
    """
    own_network_namespace()
    done = restrict_files([*python_trees(), *SYSTEM_READ, *readable], [*SYSTEM_WRITE, *writable])
    done.network_namespace = True
    return done
