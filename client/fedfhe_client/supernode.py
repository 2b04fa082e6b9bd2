"""Build the flower-supernode command line from the owner config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fedfhe_common.app_approval import ENV_APPROVED, ENV_OWNER
from fedfhe_common.fileio import write_atomic
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
    """``<state_dir>/flower-bin/flwr-clientapp``, running fedfhe's launcher with this interpreter.

    The SuperExec starts ``flwr-clientapp`` by bare name from PATH; with this
    directory first, every ClientApp on this host starts through
    ``fedfhe_client.clientapp_launcher``, which refuses Flower Apps the owner did
    not approve before unpacking them. Rewritten at every start (the venv may move).
    """
    path = cfg.state_dir.resolve() / SHIM_DIR / "flwr-clientapp"
    script = (
        f"#!{sys.executable}\n"
        "# Written by `fedfhe-client supernode`: every ClientApp on this host starts here.\n"
        "import sys\n\n"
        "from fedfhe_client.clientapp_launcher import main\n\n"
        "sys.exit(main())\n"
    )
    write_atomic(path, script.encode(), 0o755)
    return path.parent


def supernode_env(cfg: OwnerConfig, shim_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """flower-supernode's environment: the shim first on PATH, the owner's approved app digests."""
    env = flower_env(base)
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    env[ENV_APPROVED] = ",".join(cfg.approved_flower_apps)
    env[ENV_OWNER] = cfg.owner_id
    return env
