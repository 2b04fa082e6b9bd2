"""A coordinator.yaml for config tests: ``owners`` registered SuperNode key files and the given training section.

The key files are empty unless ``real_keys`` (a run config reads them: RunConfig.from_coordinator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_coordinator_yaml(tmp_path: Path, owners: int, training: dict[str, Any], real_keys: bool = False) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = []
    for i in range(owners):
        key = tmp_path / f"owner-{i}.supernode.pub"
        key.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) if real_keys else b"")
        keys.append(str(key))
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "release_key": str(tmp_path / "release.key"),
        "supernode_public_keys": keys,
        "superlink": {"certfile": "a.crt", "keyfile": "a.key", "ca_certfile": "ca.crt"},
        "training": {"output_dir": str(tmp_path / "out"), **training},
    }
    path = tmp_path / "coordinator.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
