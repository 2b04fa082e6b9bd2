"""A real PostgreSQL 15 server for the shared key registry, on loopback with TLS; no tests here.

``PostgresServer(pki)`` initialises a cluster in a private temp dir owned by the ``postgres`` system user
(the process must run as root), with a server certificate from ``pki`` and ``hostssl ... cert
clientcert=verify-full``: a node logs in as the CN of its client certificate (``DB_USER``) and nothing
else gets in over TCP. ``issue_certificates(pki)`` issues the two certificates it needs (``pg-server``
and ``DB_USER``), ``registry_config(pki)`` is a node's ``key_registry`` section for it, and
``unavailable_reason()`` says why it cannot run here (None when it can). Used by
tests/loopback/test_key_registry.py and bench/scaleout.py::

    issue_certificates(pki)
    with PostgresServer(pki) as pg:                  # started, role and database created
        start_node(..., key_registry=pg.registry_config(pki))
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fedfhe_common.pki.ca import issue
from fedfhe_common.runtime.procs import free_port, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_USER, DB_NAME = "fedfhe-registry", "fedfhe"
SERVER_CERT = "pg-server"


def unavailable_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root to run PostgreSQL as the postgres system user"
    if not (PG_BIN / "postgres").is_file() or not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL 15 binaries missing in {PG_BIN} (scripts/sysdeps.sh installs postgresql)"
    if shutil.which("runuser") is None:
        return "no runuser command"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres system user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'fedfhe-inference[registry]')"
    return None


def connect(**kw: Any) -> Any:
    """psycopg.connect with a 5 s connect timeout."""
    import psycopg

    return psycopg.connect(connect_timeout=5, **kw)


def issue_certificates(pki: Path) -> None:
    """The server's certificate (127.0.0.1, localhost) and the nodes' client certificate (CN DB_USER)."""
    issue(pki, SERVER_CERT, server_hosts=["127.0.0.1", "localhost"])
    issue(pki, DB_USER, client=True)


class PostgresServer:
    """A PostgreSQL server in a private temp dir (owned by postgres), TLS with certificates from ``pki``.

    ``pki`` holds ca.crt and the certificates of issue_certificates. The constructor runs initdb;
    ``start`` starts the server and creates DB_USER and DB_NAME; ``stop`` stops it and removes the dir.
    """

    def __init__(self, pki: Path) -> None:
        import pwd

        pw = pwd.getpwnam("postgres")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = Path(tempfile.mkdtemp(prefix="fedfhe-pg-"))  # not under pytest's 0700 root-only tmp dirs
        os.chown(self.home, self.uid, self.gid)
        self.data = self.home / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(self.data),
                        "-U", "postgres", "-A", "reject", "--no-sync"],
                       check=True, capture_output=True, cwd=self.home)
        for src, name in ((pki / f"{SERVER_CERT}.crt", "server.crt"), (pki / f"{SERVER_CERT}.key", "server.key"),
                          (pki / "ca.crt", "root.crt")):
            shutil.copyfile(src, self.data / name)
            os.chown(self.data / name, self.uid, self.gid)
            os.chmod(self.data / name, 0o600)
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"  # setup only: the socket lives in the 0700 data dir
            "hostssl all all 127.0.0.1/32 cert clientcert=verify-full\n")

    def start(self) -> None:
        log = open(self.home / "postgres.log", "wb")  # noqa: SIM115 - the server's whole life
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data), "-k", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.data / 'server.crt'}", "-c", f"ssl_key_file={self.data / 'server.key'}",
             "-c", f"ssl_ca_file={self.data / 'root.crt'}", "-c", "fsync=off"],
            user=self.uid, group=self.gid, extra_groups=[], cwd=self.data, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, \
                (self.home / "postgres.log").read_text()[-2000:]
            try:
                with self.superuser("postgres"):
                    return True
            except Exception:  # noqa: BLE001 - not accepting connections yet
                return False

        wait_until(up, 60, "PostgreSQL to accept connections")
        with self.superuser("postgres", autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{DB_USER}" LOGIN')
            conn.execute(f'CREATE DATABASE {DB_NAME} OWNER "{DB_USER}"')

    def superuser(self, dbname: str = DB_NAME, **kw: Any) -> Any:
        """A connection as ``postgres`` over the Unix socket in the data dir (setup and inspection only)."""
        return connect(host=str(self.data), port=self.port, user="postgres", dbname=dbname, **kw)

    def registry_config(self, pki: Path) -> dict[str, Any]:
        """A node's ``key_registry`` section: this server over TLS with DB_USER's certificate from ``pki``."""
        return {"host": "127.0.0.1", "port": self.port, "dbname": DB_NAME, "user": DB_USER,
                "ca_certfile": str(pki / "ca.crt"), "certfile": str(pki / f"{DB_USER}.crt"),
                "keyfile": str(pki / f"{DB_USER}.key")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
