"""The coordinator's YAML config (coordinator.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fedfhe_common.config import HostPort, Range, load_config
from fedfhe_common.errors import ConfigError
from fedfhe_common.fl_contract import DEFAULT_MAX_EXAMPLES, owner_name_from_key_file

from .aggregation import Aggregation, strategy_kwargs


@dataclass(frozen=True)
class SuperLinkConfig:
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    fleet_address: Annotated[str, HostPort()] = "0.0.0.0:9092"
    control_host: str = "127.0.0.1"
    control_port: Annotated[int, Range(1, 65535)] = 9093
    # What `flwr run` dials; must match a SAN of certfile.
    control_address: Annotated[str, HostPort(allow_empty=True)] = ""
    database: Path | None = None
    health_address: Annotated[str, HostPort(allow_empty=True)] = ""

    @property
    def control_target(self) -> str:
        return self.control_address or f"{self.control_host}:{self.control_port}"


@dataclass(frozen=True)
class TrainingConfig:
    output_dir: Path
    rounds: Annotated[int, Range(1)] = 3
    model: str = "LogisticRegression"
    model_params: dict[str, Any] = field(default_factory=dict)
    schema: str = "digits"
    min_nodes: Annotated[int, Range(1)] = 2
    local_epochs: Annotated[int, Range(1)] = 1
    public_test: Path | None = None
    round_timeout_s: Annotated[float, Range(0, low_open=True)] = 300.0
    wait_for_nodes_s: Annotated[float, Range(0)] = 120.0
    # The most rows one owner's reply may claim (FedAvg weighs replies by it): one number for every
    # owner, or a mapping owner name -> cap with an optional ``default`` for the owners not listed.
    max_examples_per_owner: int | dict[str, int] = DEFAULT_MAX_EXAMPLES
    # Flower's strategy that aggregates the replies, and its parameters (see aggregation.py).
    aggregation: Aggregation = "fedavg"
    num_malicious_nodes: Annotated[int, Range(0)] = 0  # krum, multikrum, bulyan: how many hostile owners to withstand
    trimmed_fraction: float = 0.2  # fedtrimmedavg: share cut at each end per coordinate
    multikrum_select: Annotated[int, Range(0)] = 0  # multikrum: replies averaged (0: min_nodes - num_malicious_nodes)
    # Largest L2 norm of one owner's update (its parameters minus the global ones); 0 leaves updates as sent.
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        strategy_kwargs(self.aggregation, self.min_nodes, self.num_malicious_nodes, self.trimmed_fraction,
                        self.multikrum_select)
        if not self.clip_norm >= 0 or self.clip_norm == float("inf"):
            raise ConfigError(f"training.clip_norm: must be a finite number >= 0, got {self.clip_norm}")
        caps = self.max_examples_per_owner
        for owner, cap in (caps.items() if isinstance(caps, dict) else [("", caps)]):
            where = f"training.max_examples_per_owner{'.' + owner if owner else ''}"
            if cap < 1:
                raise ConfigError(f"{where}: must be a positive number of rows, got {cap}")

    def caps(self) -> tuple[int, dict[str, int]]:
        """(cap for owners not named, per-owner caps)."""
        caps = self.max_examples_per_owner
        if isinstance(caps, int):
            return caps, {}
        named = {k: v for k, v in caps.items() if k != "default"}
        return caps.get("default", DEFAULT_MAX_EXAMPLES), named


@dataclass(frozen=True)
class CoordinatorConfig:
    superlink: SuperLinkConfig
    training: TrainingConfig
    state_dir: Path
    # The release signing key (Ed25519, 0600): train signs the training artifact with it.
    release_key: Path
    supernode_public_keys: list[Path] = field(default_factory=list)

    def owner_names(self) -> list[str]:
        """Owners as their SuperNode key files name them (``<owner>.supernode.pub``)."""
        return [owner_name_from_key_file(p.name) for p in self.supernode_public_keys]

    def __post_init__(self) -> None:
        caps = self.training.max_examples_per_owner
        if isinstance(caps, dict):
            unknown = sorted(set(caps) - set(self.owner_names()) - {"default"})
            if unknown:
                raise ConfigError(
                    f"training.max_examples_per_owner: {', '.join(unknown)} not among the owners of "
                    f"supernode_public_keys ({', '.join(self.owner_names()) or 'none'})"
                )


def load(path: str | Path) -> CoordinatorConfig:
    return load_config(CoordinatorConfig, path)
