"""Build the flower-supernode command line from the owner config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fedfhe_common.app_approval import ENV_APPROVED, ENV_OWNER
from fedfhe_common.fileio import write_atomic
from fedfhe_common.fl_contract import TEST_HOSTILE_REPLY, TEST_RECORD_UPDATES
from fedfhe_common.procs import flower_env, venv_bin

from .config import OwnerConfig

SHIM_DIR = "flower-bin"  # under state_dir: first on the SuperNode's PATH


def node_config(cfg: OwnerConfig) -> str:
    """Flower's node config: what the ClientApp reads to find this owner's file."""
    items = {
        "owner-id": cfg.owner_id,
        "data-path": str(cfg.data.resolve()),
        "schema": cfg.schema,
        "holdout-fraction": cfg.holdout_fraction,
        "seed": cfg.seed,
    }
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
    # flwr-clientapp instead (write_clientapp_shim, fedfhe_common.app_approval).
    host, _, port = cfg.runtime_address.rpartition(":")
    cmd = [
        venv_bin("flower-supernode"),
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


def write_clientapp_shim(cfg: OwnerConfig) -> Path:
    """``<state_dir>/flower-bin``: fedfhe's ``flwr-clientapp``, and a refusal for every other app command.

    The SuperExec starts ``flwr-clientapp`` by bare name from PATH; with this
    directory first, every ClientApp on this host starts through
    ``fedfhe_client.clientapp_launcher``, which refuses Flower Apps the owner did
    not approve before unpacking them. A run whose app declares an ``agentapp``
    makes the SuperNode start ``flwr-agentapp`` instead (which would unpack and
    import the FAB unchecked), so every other command Flower may start here
    (``TASK_TYPE_TO_COMMAND``) is shadowed by a stub that refuses. Rewritten at
    every start (the venv may move).
    """
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    folder = cfg.state_dir.resolve() / SHIM_DIR
    for command in sorted(set(TASK_TYPE_TO_COMMAND.values()) - {"flwr-clientapp"}):
        refusal = (
            "#!/bin/sh\n# Written by `fedfhe-client supernode`: a data owner's host runs only approved ClientApps.\n"
            f'echo "fedfhe: refused to start {command}: this SuperNode runs only approved ClientApps" >&2\nexit 1\n'
        )
        write_atomic(folder / command, refusal.encode(), 0o755)
    script = (
        f"#!{sys.executable}\n"
        "# Written by `fedfhe-client supernode`: every ClientApp on this host starts here.\n"
        "import sys\n\n"
        "from fedfhe_client.clientapp_launcher import main\n\n"
        "sys.exit(main())\n"
    )
    write_atomic(folder / "flwr-clientapp", script.encode(), 0o755)
    return folder


def supernode_env(cfg: OwnerConfig, shim_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """flower-supernode's environment: the shim first on PATH, the owner's approved app digests."""
    env = flower_env(base)
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    env[ENV_APPROVED] = ",".join(cfg.approved_flower_apps)
    env[ENV_OWNER] = cfg.owner_id
    return env
