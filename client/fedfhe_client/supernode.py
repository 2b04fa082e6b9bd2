"""Build the flower-supernode command line from the owner config."""

from __future__ import annotations

import json

from fedfhe_common.procs import venv_bin

from .config import OwnerConfig


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
