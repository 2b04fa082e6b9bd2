"""The coordinator's YAML config (coordinator.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfhe_common.config import load_config


@dataclass(frozen=True)
class SuperLinkConfig:
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    fleet_address: str = "0.0.0.0:9092"
    control_host: str = "127.0.0.1"
    control_port: int = 9093
    # What `flwr run` dials; must match a SAN of certfile.
    control_address: str = ""
    database: Path | None = None
    health_address: str = ""

    @property
    def control_target(self) -> str:
        return self.control_address or f"{self.control_host}:{self.control_port}"


@dataclass(frozen=True)
class TrainingConfig:
    output_dir: Path
    rounds: int = 3
    model: str = "LogisticRegression"
    model_params: dict[str, Any] = field(default_factory=dict)
    schema: str = "digits"
    min_nodes: int = 2
    local_epochs: int = 1
    public_test: Path | None = None
    round_timeout_s: float = 300.0
    wait_for_nodes_s: float = 120.0


@dataclass(frozen=True)
class CoordinatorConfig:
    superlink: SuperLinkConfig
    training: TrainingConfig
    state_dir: Path
    # The release signing key (Ed25519, 0600): train signs the training artifact with it.
    release_key: Path
    supernode_public_keys: list[Path] = field(default_factory=list)


def load(path: str | Path) -> CoordinatorConfig:
    return load_config(CoordinatorConfig, path)
