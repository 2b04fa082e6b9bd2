"""A data owner's YAML config (owner.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedfhe_common.config import load_config


@dataclass(frozen=True)
class InferenceEndpoint:
    """Where this owner's encrypted predictions run; certfile's CN is its identity there."""

    address: str
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    server_name: str = ""
    model_id: str = ""  # default model for `predict` (empty: the only one served)
    batch_size: int = 16  # ciphertexts per Predict call
    timeout_s: float = 600.0  # deadline per Predict call
    upload_timeout_s: float = 900.0  # deadline for one evaluation-key upload
    chunk_bytes: int = 1 << 20  # key upload chunk size
    max_message_bytes: int = 64 << 20


@dataclass(frozen=True)
class OwnerConfig:
    owner_id: str
    superlink: str
    root_certificates: Path
    auth_key: Path
    data: Path
    state_dir: Path
    labels: Path | None = None
    schema: str = "digits"
    holdout_fraction: float = 0.2
    seed: int = 0
    runtime_address: str = "127.0.0.1:9094"
    health_address: str = ""
    inference: InferenceEndpoint | None = None


def load(path: str | Path) -> OwnerConfig:
    return load_config(OwnerConfig, path)
