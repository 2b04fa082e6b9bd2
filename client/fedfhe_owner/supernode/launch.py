"""Build the flower-supernode command line from the owner config, and run it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.fl_contract import TEST_HOSTILE_REPLY, TEST_RECORD_UPDATES
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.ml.data import load_table
from fedfhe_common.pki.app_approval import ENV_APPROVED, ENV_OWNER
from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_common.runtime.fileio import write_atomic
from fedfhe_common.runtime.logs import DEFAULT_LEVEL, configure, flower_level_env
from fedfhe_common.runtime.procs import exec_in_venv, flower_env, venv_bin
from fedfhe_common.runtime.relay import exit_as, run_relayed
from fedfhe_owner.clientapp import clientapp_door
from fedfhe_owner.config import OwnerConfig
from fedfhe_owner.server_certificate import wait_and_refuse_if_revoked

SHIM_DIR = "flower-bin"  # under state_dir: first on the SuperNode's PATH
SERVER_DIR = "clientapp-server"  # under state_dir (0700): the ClientApp server's socket
TMP_DIR = "tmp"  # under state_dir (0700): TMPDIR of flower-supernode and every ClientApp it starts
ENV_CLIENTAPP_SERVER = "FEDFHE_CLIENTAPP_SERVER"
# One thread per BLAS/OpenMP pool: the ClientApp server forks (no thread may exist then), and N owners
# on a machine would otherwise start N pools per core; a linear model's local fit gains nothing from more.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# How often the SuperExec asks its SuperNode for a message to start a ClientApp for (Flower's only timing
# knob; its default is 1 s, fedfhe's other processes use 0.5 s). Each poll is one loopback HTTP request:
# what an idle owner pays per interval is in bench/results/federated.json (poll-cost).
TASK_POLL_VARIABLE = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_INTERVAL = "0.1"
log = logging.getLogger("fedfhe.owner.supernode")


class OwnerLines(logging.Formatter):
    """Text mode: ``fedfhe-owner: [warning: ]message``, as the wrapper's own lines always read."""

    def format(self, record: logging.LogRecord) -> str:
        warning = "warning: " if record.levelno >= logging.WARNING else ""
        return f"fedfhe-owner: {warning}{record.getMessage()}"


def node_config(cfg: OwnerConfig) -> str:
    """Flower's node config: what the ClientApp reads to find this owner's file."""
    items = {
        "owner-id": cfg.owner_id,
        "data-path": str(cfg.data.resolve()),
        "schema": cfg.schema,
        "holdout-fraction": cfg.holdout_fraction,
        "seed": cfg.seed,
        fc.NODE_REQUIRE_SECURE: cfg.privacy.require_secure_aggregation,
        fc.NODE_MIN_OWNERS: cfg.privacy.min_owners_per_round,
        fc.NODE_MAX_EVALUATIONS: cfg.privacy.max_evaluations_per_run,
        fc.NODE_PLAIN_NEWTON: cfg.privacy.plain_newton,
        **cfg.privacy.trees.node_config(),
    }
    dp = cfg.privacy.local_dp
    if dp is not None:  # the sensitivity resolved here: the ClientApp applies exactly what the owner's file says
        items |= {fc.NODE_LOCAL_DP_CLIPPING_NORM: dp.clipping_norm, fc.NODE_LOCAL_DP_EPSILON: dp.epsilon,
                  fc.NODE_LOCAL_DP_DELTA: dp.delta, fc.NODE_LOCAL_DP_SENSITIVITY: dp.noise_sensitivity}
    if cfg.labels:
        items["labels-path"] = str(cfg.labels.resolve())
    if cfg.test_hostile_reply:
        items[TEST_HOSTILE_REPLY] = cfg.test_hostile_reply
    if cfg.test_record_updates:
        items[TEST_RECORD_UPDATES] = str(cfg.test_record_updates.resolve())
    # Values are TOML: json.dumps quotes strings (with escapes) and leaves numbers bare.
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


def supernode_command(cfg: OwnerConfig) -> list[str]:
    # No --trusted-entities: Flower 1.39 accepts only FABs carrying verification records from its hosted
    # platform, so it would refuse fedfhe's locally built app; the app pin is checked by fedfhe's
    # flwr-clientapp instead (write_clientapp_shim, fedfhe_common.pki.app_approval).
    host, _, port = cfg.runtime_address.rpartition(":")
    cmd = [
        # Flower's flower-supernode with one repair (a stopped run's message must not wedge the node).
        sys.executable, "-I", "-m", "fedfhe_owner.supernode.flower_supernode",
        "--superlink", cfg.superlink,
        "--root-certificates", str(cfg.root_certificates),
        "--auth-supernode-private-key", str(cfg.auth_key),
        "--node-config", node_config(cfg),
        "--host", host or "127.0.0.1",
        "--port", port,
    ]
    if cfg.health_address:
        cmd += ["--health-server-address", cfg.health_address]
    return cmd


def clientapp_server_enabled(env: dict[str, str] | None = None) -> bool:
    """``FEDFHE_CLIENTAPP_SERVER=off`` starts one cold process per message (Flower's way); default: the server."""
    value = (os.environ if env is None else env).get(ENV_CLIENTAPP_SERVER, "fork").strip().lower()
    if value not in ("fork", "off"):
        raise ConfigError(f"{ENV_CLIENTAPP_SERVER}={value!r}: expected 'fork' or 'off'")
    return value == "fork"


def write_clientapp_shim(cfg: OwnerConfig, server: bool | None = None) -> Path:
    """``<state_dir>/flower-bin``: fedfhe's ``flwr-clientapp``, and a refusal for every other app command.

    The SuperExec starts ``flwr-clientapp`` by bare name from PATH; with this
    directory first, every ClientApp on this host starts through
    ``fedfhe_owner.clientapp.clientapp_launcher``, which refuses Flower Apps the owner did
    not approve before unpacking them. A run whose app declares an ``agentapp``
    makes the SuperNode start ``flwr-agentapp`` instead (which would unpack and
    import the FAB unchecked), so every other command Flower may start here
    (``TASK_TYPE_TO_COMMAND``) is shadowed by a stub that refuses. Rewritten at
    every start (the venv may move).

    With ``server`` (default: ``clientapp_server_enabled()``), ``flower-superexec``
    here forks fedfhe's pre-imported ClientApp server (``fedfhe_owner.clientapp.clientapp_server``)
    beside Flower's SuperExec, then becomes it, and ``flwr-clientapp`` is the door
    (``fedfhe_owner.clientapp.clientapp_door``) that hands each message to that server:
    a fork instead of about 2.3 s of imports per message. The launcher code, and
    so the approval check, is the same on both paths.
    """
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND  # lazy: flwr takes ~1 s to import


    server = clientapp_server_enabled() if server is None else server
    folder = cfg.state_dir.resolve() / SHIM_DIR
    for command in sorted(set(TASK_TYPE_TO_COMMAND.values()) - {"flwr-clientapp"}):
        refusal = (
            "#!/bin/sh\n# Written by `fedfhe-owner supernode`: a data owner's host runs only approved ClientApps.\n"
            f'echo "fedfhe: refused to start {command}: this SuperNode runs only approved ClientApps" >&2\nexit 1\n'
        )
        write_atomic(folder / command, refusal.encode(), 0o755)
    cold = [sys.executable, "-m", "fedfhe_owner.clientapp.clientapp_launcher"]
    if not server:
        (folder / "flower-superexec").unlink(missing_ok=True)
        script = (
            f"#!{sys.executable}\n"
            "# Written by `fedfhe-owner supernode`: every ClientApp on this host starts here.\n"
            "import sys\n\n"
            "from fedfhe_owner.clientapp.clientapp_launcher import main\n\n"
            "sys.exit(main())\n"
        )
        write_atomic(folder / "flwr-clientapp", script.encode(), 0o755)
        return folder
    sock = str(cfg.state_dir.resolve() / SERVER_DIR / "clientapp.sock")
    door = (
        f"#!{sys.executable} -IS\n"
        "# Written by `fedfhe-owner supernode`: every ClientApp on this host starts here\n"
        "# (the source of fedfhe_owner/clientapp/clientapp_door.py, then its call).\n"
        + Path(clientapp_door.__file__).read_text()
        + f"\n\nsys.exit(main({sock!r}, {cold!r}, sys.argv[1:]))\n"
    )
    write_atomic(folder / "flwr-clientapp", door.encode(), 0o755)
    server_cmd = [sys.executable, "-m", "fedfhe_owner.clientapp.clientapp_server", "--socket", sock]
    superexec = (
        f"#!{sys.executable} -IS\n"
        "# Written by `fedfhe-owner supernode`: fedfhe's ClientApp server beside Flower's unchanged SuperExec.\n"
        "import os\nimport sys\n\n"
        "if os.fork() == 0:  # the server: a child of the SuperExec, which it outlives by at most 0.5 s\n"
        f"    os.execv({sys.executable!r}, [*{server_cmd!r}, '--parent-pid', str(os.getppid())])\n"
        f"os.execv({venv_bin('flower-superexec')!r}, [{venv_bin('flower-superexec')!r}, *sys.argv[1:]])\n"
    )
    write_atomic(folder / "flower-superexec", superexec.encode(), 0o755)
    return folder


def fresh_tmp_dir(cfg: OwnerConfig) -> Path:
    """``<state_dir>/tmp``, emptied: the SuperNode's TMPDIR.

    A ClientApp unpacks the Flower App into a temporary directory and removes it on exit, but a
    ClientApp killed mid-message (SIGKILL, the SuperNode's stop) cannot: in /tmp those directories
    piled up across runs. Here each start of the SuperNode clears what the last one left, and the
    unpacked app stays in a 0700 directory of this owner's.
    """
    folder = cfg.state_dir.resolve() / TMP_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    return folder


def supernode_env(cfg: OwnerConfig, shim_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """flower-supernode's environment: the shim first on PATH, the owner's approved app digests.

    Also one thread per BLAS/OpenMP pool (``THREAD_VARIABLES``) and the SuperExec's
    task poll (``TASK_POLL_INTERVAL``) unless the operator's environment sets them.
    """
    given = os.environ if base is None else base
    env = flower_env(base)
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    for name in THREAD_VARIABLES:
        env.setdefault(name, "1")
    if TASK_POLL_VARIABLE not in given:
        env[TASK_POLL_VARIABLE] = TASK_POLL_INTERVAL
    env[ENV_APPROVED] = ",".join(cfg.approved_flower_apps)
    env[ENV_OWNER] = cfg.owner_id
    env["TMPDIR"] = str(cfg.state_dir.resolve() / TMP_DIR)
    return env


def run_supernode(cfg: OwnerConfig, config_path: Path, log_format: str = "text",
                  log_level: str = DEFAULT_LEVEL) -> int:
    """``fedfhe-owner supernode``: check what can be checked, then flower-supernode in the foreground.

    Text logs: this process becomes flower-supernode (exec), as before. ``log_format`` json: its own
    lines are JSON records and it stays flower-supernode's parent, relaying each line Flower (and the
    ClientApps it starts) print as a JSON record with ``"source": "flower-supernode"``. ``log_level`` applies to
    this process and, through FLWR_LOG_LEVEL, to flower-supernode and its ClientApps.
    """
    configure(log_format, log_level)
    if log_format == "text":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OwnerLines())
    if not cfg.approved_flower_apps:
        log.warning("%s: approved_flower_apps is empty: this SuperNode will refuse every run; pin the app "
                    "digest printed by `fedfhe-coordinator app-hash`", config_path)
    try:
        X, _ = load_table(cfg.data, resolve_schema(cfg.schema), cfg.labels)
        log.info("%s: %d rows fit schema %s", cfg.data, len(X), cfg.schema)
    except FedfheError as exc:
        # Stay up: the owner can fix the file before the next run; each run reports the problem.
        log.warning("%s", exc)
    dp = cfg.privacy.local_dp
    if dp is not None:
        log.info("local differential privacy on (privacy.local_dp): each update clipped to L2 norm %g, then Gaussian "
                 "noise of standard deviation %.4g per coordinate (per round: epsilon %g, delta %g; sensitivity %g)",
                 dp.clipping_norm, dp.noise_stddev, dp.epsilon, dp.delta, dp.noise_sensitivity)
    if cfg.crl_file is not None:
        cert = wait_and_refuse_if_revoked(cfg.superlink, cfg.root_certificates, cfg.crl_file, "SuperLink",
                                          log=log.info, mark=cfg.crl_mark, allow_expired=cfg.allow_expired_crl)
        log.info("SuperLink %s: certificate serial %x is not on %s", cfg.superlink, cert.serial_number, cfg.crl_file)
    cmd = supernode_command(cfg)
    fresh_tmp_dir(cfg)
    env = flower_level_env(supernode_env(cfg, write_clientapp_shim(cfg)), log_level)
    if log_format == "text":
        logging.shutdown()
        exec_in_venv(cmd, env)

    return exit_as(run_relayed(cmd, env, "flower-supernode", json_lines=True))
