"""Build the flower-superlink command line from the coordinator config.

TLS is always on (no --insecure path exists here) and SuperNode
authentication is always enabled: only registered public keys may join.
"""

from __future__ import annotations

from fedfhe_common.procs import venv_bin

from .config import CoordinatorConfig


def superlink_command(cfg: CoordinatorConfig) -> list[str]:
    sl = cfg.superlink
    cmd = [
        venv_bin("flower-superlink"),
        "--ssl-ca-certfile", str(sl.ca_certfile),
        "--ssl-certfile", str(sl.certfile),
        "--ssl-keyfile", str(sl.keyfile),
        "--fleet-api-type", "grpc-rere",
        "--fleet-api-address", sl.fleet_address,
        "--host", sl.control_host,
        "--port", str(sl.control_port),
        "--enable-supernode-auth",
        # The ServerApp comes from the installed fedfhe-coordinator package: never `uv sync` at run time.
        "--disable-runtime-dependency-installation",
    ]
    if sl.database:
        sl.database.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--database", str(sl.database)]
    if sl.health_address:
        cmd += ["--health-server-address", sl.health_address]
    return cmd
