"""Build the flower-superlink command line from the coordinator config, and run it.

TLS is always on (no --insecure path exists here) and SuperNode
authentication is always enabled: only registered public keys may join.
"""

from __future__ import annotations

from fedfhe_common.runtime.logs import DEFAULT_LEVEL, configure, flower_level_env
from fedfhe_common.runtime.procs import exec_in_venv, flower_env, venv_bin
from fedfhe_common.runtime.relay import exit_as, run_relayed
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.superlink.metrics import Metrics


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


def run_superlink(cfg: CoordinatorConfig, log_format: str = "text", log_level: str = DEFAULT_LEVEL) -> int:
    """``fedfhe-coordinator superlink``: flower-superlink in the foreground, under whatever supervises this.

    With nothing to add (text logs, ``metrics_address: ""``) this process becomes flower-superlink
    (exec). Otherwise it stays its parent: it serves the training metrics (metrics.py) and, with
    ``log_format`` json, relays each line flower-superlink and its ServerApps print as a JSON record.
    ``log_level`` applies to this process and, through FLWR_LOG_LEVEL, to flower-superlink and its ServerApps.
    """
    cmd = superlink_command(cfg)
    env = flower_level_env(flower_env(), log_level)
    if log_format == "text" and not cfg.metrics_address:
        exec_in_venv(cmd, env)  # the service manager supervises flower-superlink itself

    configure(log_format, log_level)
    if cfg.metrics_address:
        # before Flower starts: a taken port is a config error, not half a service
        Metrics(cfg).serve(cfg.metrics_address)
    return exit_as(run_relayed(cmd, env, "flower-superlink", json_lines=log_format == "json"))
