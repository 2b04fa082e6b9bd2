"""The run config: what `fedfhe-coordinator train` tells the ServerApp through `flwr run`, typed in one place.

Flower 1.39 carries a run config as one flat table of ``bool``, ``int``, ``float`` and ``str``
(``flwr.app.user_config.UserConfigValue``). Nested TOML tables are flattened to dotted keys, and
the SuperLink refuses a run whose override key is not in the app's flattened
``[tool.flwr.app.config]`` (``fuse_dicts(..., check_keys=True)``, "Invalid run configuration").
The per-owner maps (``owner-keys``, ``max-examples-per-owner``) are keyed by owner names and key
ids known only at deployment, which the shipped (and owner-approved) pyproject cannot declare;
so they, and ``model-params``, travel as JSON strings.

``RunConfig()`` holds the Flower App's defaults: ``flower_app/pyproject.toml`` must equal
``RunConfig().to_flower()`` (tests/unit/test_run_config_keys.py). A Flower key is its field's
name with ``-`` for ``_``; the keys the ClientApp reads too are named in ``fl_contract``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from fedfhe_common.contracts.fl_contract import DEFAULT_MAX_EXAMPLES, owner_key_id, owner_name_from_key_file
from fedfhe_common.runtime.errors import ConfigError

if TYPE_CHECKING:
    from fedfhe_coordinator.config import CoordinatorConfig, TrainingConfig

FlowerValue = bool | int | float | str


@dataclass(frozen=True)
class RunConfig:
    """Every run config key of the Flower App, with its Python type and the app's default."""

    num_server_rounds: int = 3
    model: str = "LogisticRegression"
    model_params: dict[str, Any] = field(default_factory=dict)
    schema: str = "digits"
    min_nodes: int = 2
    local_epochs: int = 1
    public_test: str = ""  # a table on the coordinator's host; "" for none
    output_dir: str = ""  # "" for ./fedfhe-training
    round_timeout: float = 300.0
    wait_for_nodes: float = 120.0
    owner_keys: dict[str, str] = field(default_factory=dict)  # registered key id -> owner name
    max_examples: int = DEFAULT_MAX_EXAMPLES  # the cap of owners not in max_examples_per_owner
    max_examples_per_owner: dict[str, int] = field(default_factory=dict)
    aggregation: str = "auto"
    num_malicious_nodes: int = 0
    trimmed_fraction: float = 0.2
    multikrum_select: int = 0
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    clip_norm: float = 0.0
    max_owner_share: float = 0.0
    secure_aggregation: bool = False  # fl_contract.RUN_SECURE
    secagg_num_shares: int = 0
    secagg_reconstruction_threshold: int = 0
    secagg_clipping_range: float = 8.0  # fl_contract.RUN_SECAGG_CLIPPING_RANGE
    secagg_quantization_range: int = 4194304
    secagg_max_weight: float = 10000.0  # fl_contract.RUN_SECAGG_MAX_WEIGHT
    dp_noise_multiplier: float = 0.0  # fl_contract.RUN_DP_NOISE_MULTIPLIER
    dp_clipping_norm: float = 1.0
    # Federated XGBoost (model XGBClassifier / XGBRegressor): Flower's FedXgb strategy, the boosting
    # parameters every owner trains with (fedxgb.BoostParams), and the trees the final model may hold
    # (training.xgboost_budget, checked against the run's plan when the config loads).
    xgboost_mode: str = "bagging"
    xgboost_combine: str = "average"  # bagging: fedxgb.COMBINES, resolved ("average" or "sum")
    xgboost_params: dict[str, Any] = field(default_factory=dict)
    xgboost_max_trees: int = 0
    xgboost_max_n_bits: int = 0  # compile's cap, signed into the artifact
    test_record_dir: str = ""  # test runs only: where the coordinator keeps each masked vector it received

    @classmethod
    def from_training(cls, t: TrainingConfig, owner_keys: dict[str, str] | None = None) -> RunConfig:
        """``coordinator.yaml``'s training section (and the owners' registered keys) as a run config."""
        sa = t.secure_aggregation
        default_cap, per_owner = t.caps()
        boosting = t.boosting(len(set((owner_keys or {}).values())))
        return cls(
            num_server_rounds=t.rounds, model=t.model, model_params=dict(t.model_params), schema=t.schema,
            min_nodes=t.min_nodes, local_epochs=t.local_epochs,
            public_test=str(t.public_test.resolve()) if t.public_test else "", output_dir=str(t.output_dir.resolve()),
            round_timeout=float(t.round_timeout_s), wait_for_nodes=float(t.wait_for_nodes_s),
            owner_keys=dict(owner_keys or {}), max_examples=int(default_cap), max_examples_per_owner=dict(per_owner),
            aggregation=t.aggregation, num_malicious_nodes=t.num_malicious_nodes,
            trimmed_fraction=float(t.trimmed_fraction), multikrum_select=t.multikrum_select,
            server_learning_rate=float(t.server_learning_rate), server_momentum=float(t.server_momentum),
            clip_norm=float(t.clip_norm), max_owner_share=float(t.max_owner_share),
            secure_aggregation=sa.enabled is True, secagg_num_shares=sa.num_shares,
            secagg_reconstruction_threshold=sa.reconstruction_threshold,
            secagg_clipping_range=float(sa.clipping_range), secagg_quantization_range=sa.quantization_range,
            secagg_max_weight=float(sa.max_weight), dp_noise_multiplier=float(sa.noise_multiplier),
            dp_clipping_norm=float(sa.clipping_norm),
            xgboost_mode=boosting.mode, xgboost_combine=boosting.combine,
            xgboost_params=boosting.params.to_dict() if boosting.max_trees else {},
            xgboost_max_trees=boosting.max_trees, xgboost_max_n_bits=boosting.budget.max_n_bits if boosting.max_trees
            else 0,
        )

    @classmethod
    def from_coordinator(cls, cfg: CoordinatorConfig, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """The run `train` submits: the config's training section, then ``overrides`` (Flower keys, checked)."""
        base = cls.from_training(cfg.training, owner_keys(cfg.supernode_public_keys))
        return cls.from_flower({**base.to_flower(), **overrides}) if overrides else base

    def to_flower(self) -> dict[str, FlowerValue]:
        """The flat table `flwr run --run-config` takes (and the pyproject declares)."""
        out: dict[str, FlowerValue] = {}
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _types()[f.name]
            if _is_json(kind):
                value = json.dumps(value, sort_keys=True)
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # TOML keeps 300 and 300.0 apart; the pyproject declares floats
            out[flower_key(f.name)] = value
        return out

    @classmethod
    def from_flower(cls, values: Mapping[str, Any]) -> RunConfig:
        """``context.run_config`` checked and typed; ConfigError naming the first missing, unknown or bad key."""
        keys = {flower_key(f.name): f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ConfigError(f"run config: unknown key(s) {', '.join(map(repr, unknown))}")
        missing = [k for k in keys if k not in values]
        if missing:
            raise ConfigError(f"run config: missing key {missing[0]!r}")
        return cls(**{name: _decode(key, values[key], _types()[name]) for key, name in keys.items()})


def flower_key(name: str) -> str:
    """A field's Flower key: ``num_server_rounds`` -> ``num-server-rounds``."""
    return name.replace("_", "-")


def owner_keys(keys: list[Path]) -> dict[str, str]:
    """Registered key id -> owner name, as the ServerApp will see the keys (Flower stores them as PEM).

    The ServerApp names each reply's owner from this map and the node's registered
    public key, never from what the reply says about itself.
    """
    out = {}
    for path in keys:
        try:
            key = serialization.load_ssh_public_key(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: cannot read the SuperNode public key: {exc}") from None
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        out[owner_key_id(pem)] = owner_name_from_key_file(path.name)
    return out


@functools.cache
def _types() -> dict[str, Any]:
    """Field name -> its type (the annotations are strings under ``from __future__ import annotations``)."""
    return typing.get_type_hints(RunConfig)


def _is_json(kind: Any) -> bool:
    return typing.get_origin(kind) is dict


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _decode(key: str, value: Any, kind: Any) -> Any:
    """One Flower value as its field's type; ConfigError naming ``key`` if it is not one."""
    if _is_json(kind):
        return _decode_json(key, value, typing.get_args(kind)[1])
    fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    if not fits:
        raise ConfigError(f"run config key {key!r}: expected {_NAMES[kind]}, got {value!r}")
    return kind(value)


def _decode_json(key: str, value: Any, item: Any) -> dict[str, Any]:
    """A JSON object (string keys, ``item`` values) inside a string: how Flower carries a per-owner map."""
    try:
        data = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ConfigError(f"run config key {key!r}: expected a JSON object in a string, got {value!r}")
    if item is not Any:
        for k, v in data.items():
            if not isinstance(v, item) or (item is int and isinstance(v, bool)):
                raise ConfigError(f"run config key {key!r}: {k!r} must map to {_NAMES[item]}, got {v!r}")
    return data
