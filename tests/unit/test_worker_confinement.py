"""An FHE worker job cannot read the node's TLS key, reach the network or see the node's environment.

Real worker processes (``python -m fedfhe_inference.sandbox``), asked through the node's own pipe protocol
to do what code injected into a job would do (the "probe" operation the node runs at start).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedfhe_inference.confine import landlock_abi
from fedfhe_inference.sandbox import SandboxPool

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock (Linux >= 5.13)")


def _probe(pool: SandboxPool, path: Path, port: int) -> tuple[bytes, bytes]:
    read, net = pool.call([b"probe", str(path).encode(), b"127.0.0.1", str(port).encode()], timeout=300)
    return read, net


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "pki").mkdir()
    (tmp_path / "bundles").mkdir()
    key = tmp_path / "pki" / "inference.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    bundle = tmp_path / "bundles" / "server.zip"
    bundle.write_bytes(b"PK")
    return {"key": key, "bundle": bundle, "bundles": tmp_path / "bundles"}


def test_a_confined_worker_reads_its_bundles_but_not_the_key_nor_the_network(files, listener, monkeypatch):
    monkeypatch.setenv("FEDFHE_NODE_SECRET", "must-not-reach-a-worker")
    pool = SandboxPool(1, 8192 << 20, 0, 60, readable=[str(files["bundles"])])
    try:
        read, net = _probe(pool, files["key"], listener)
        assert read.startswith(b"refused") and net.startswith(b"refused"), (read, net)
        read, _ = _probe(pool, files["bundle"], listener)
        assert read == b"open"  # what it must read, it can: the refusal above is the confinement, not a typo
        (pid,) = pool.pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"FEDFHE_NODE_SECRET")]
        tmp = next(v for v in environ if v.startswith(b"TMPDIR=")).split(b"=", 1)[1].decode()
        assert Path(tmp).is_dir() and Path(tmp).name.startswith("fedfhe-worker-")
    finally:
        pool.shutdown()
    assert not Path(tmp).exists()  # its private directory goes with it


def test_an_unconfined_worker_can_do_both(files, listener):
    """The control: without confinement the same probe reads the key and connects, so the test above can fail."""
    pool = SandboxPool(1, 8192 << 20, 0, 60, readable=None)
    try:
        read, net = _probe(pool, files["key"], listener)
        assert (read, net) == (b"open", b"open")
    finally:
        pool.shutdown()


def test_the_node_refuses_to_start_with_workers_it_cannot_confine(files):
    """A worker whose confinement fails never serves; the node's start-up check names the way out."""
    from fedfhe_common.runtime.errors import ConfigError
    from fedfhe_inference.server import check_confinement

    pool = SandboxPool(1, 8192 << 20, 0, 60, readable=["/tmp/\0not-a-path"])  # a rule the kernel cannot take
    with pytest.raises(ConfigError, match="could not be confined.*confine_workers: false"):
        check_confinement(pool, files["key"])
