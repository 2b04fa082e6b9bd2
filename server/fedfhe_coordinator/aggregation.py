"""Which Flower 1.39 strategy aggregates the owners' replies, and its checked parameters.

The names are what an operator writes in coordinator.yaml (``training.aggregation``).
Each maps to Flower's own strategy class; fedfhe never reimplements the
aggregation rule, it only checks the parameters against the run's node count so
a misconfigured run fails when the config is loaded, not in round 1. ``newton``
averages the owners' gradients and Hessians with Flower's FedAvg and steps on
the coordinator (fedfhe_common.ml.newton); ``auto`` (the default) is newton where
it applies and fedavg elsewhere, resolved by ``resolve`` and recorded in the artifact.
"""

from __future__ import annotations

from typing import Any, Literal

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import newton, secure_target
from fedfhe_common.runtime.errors import ConfigError

Aggregation = Literal["auto", "newton", "fedavg", "fedavgm", "fedmedian", "fedtrimmedavg", "krum", "multikrum",
                      "bulyan"]
AGGREGATIONS: tuple[str, ...] = ("auto", "newton", "fedavg", "fedavgm", "fedmedian", "fedtrimmedavg", "krum",
                                 "multikrum", "bulyan")
# Flower's FedProx is not offered: it only sends ``proximal-mu`` and relies on the owner's loss adding
# mu/2 * ||w - w_global||^2. sklearn's solvers (lbfgs, liblinear, SGD's Cython loop) regularise towards 0
# and take no such term; added outside the solver (one proximal step after the local fit) it becomes
# w_local + mu * w_global over 1 + mu, the same damping FedAvgM's server_learning_rate 1 / (1 + mu) gives.
SERVER_OPTIMISED = ("fedavgm",)
# What can aggregate SecAgg+'s sum: rules that need only the average. FedAvgM's server step acts on the average
# (secure_training.SecureRecorder feeds it to Flower's FedAvgM); the robust rules need every single update.
SECURE_AGGREGATIONS = ("auto", "newton", "fedavg", "fedavgm")


def strategy_kwargs(
    name: str, min_nodes: int, num_malicious_nodes: int = 0, trimmed_fraction: float = 0.2,
    multikrum_select: int = 0, server_learning_rate: float = 1.0, server_momentum: float = 0.0,
) -> dict[str, Any]:
    """The extra keyword arguments of Flower's strategy ``name``; ConfigError when they cannot work.

    The bounds are those the strategies need to aggregate at all: Krum scores each
    reply by its n - f - 2 nearest neighbours, Bulyan needs n >= 4f + 3. FedAvgM's
    momentum must stay below 1 (at 1 the server's steps never decay).
    """
    if name not in AGGREGATIONS:
        raise ConfigError(f"training.aggregation: must be one of {', '.join(AGGREGATIONS)}, got {name!r}")
    if not (0.0 < server_learning_rate <= 10.0):
        raise ConfigError(f"training.server_learning_rate: must lie in (0, 10], got {server_learning_rate}")
    if not (0.0 <= server_momentum < 1.0):
        raise ConfigError(f"training.server_momentum: must lie in [0, 1), got {server_momentum}")
    if name in SERVER_OPTIMISED:
        return {"server_learning_rate": float(server_learning_rate), "server_momentum": float(server_momentum)}
    f = num_malicious_nodes
    if f < 0:
        raise ConfigError(f"training.num_malicious_nodes: must not be negative, got {f}")
    if name == "fedtrimmedavg":
        if not 0.0 <= trimmed_fraction < 0.5:
            raise ConfigError(f"training.trimmed_fraction: must lie in [0, 0.5), got {trimmed_fraction}")
        return {"beta": float(trimmed_fraction)}
    if name in ("krum", "multikrum"):
        if min_nodes < 2 * f + 3:
            raise ConfigError(
                f"training.aggregation {name} with num_malicious_nodes {f} needs min_nodes >= {2 * f + 3}, "
                f"got {min_nodes}"
            )
        if name == "krum":
            return {"num_malicious_nodes": f}
        select = multikrum_select or max(1, min_nodes - f)
        if not 1 <= select <= min_nodes - f:
            raise ConfigError(
                f"training.multikrum_select: must lie in [1, min_nodes - num_malicious_nodes = {min_nodes - f}], "
                f"got {select}"
            )
        return {"num_malicious_nodes": f, "num_nodes_to_select": select}
    if name == "bulyan":
        if min_nodes < 4 * f + 3:
            raise ConfigError(
                f"training.aggregation bulyan with num_malicious_nodes {f} needs min_nodes >= {4 * f + 3}, "
                f"got {min_nodes}"
            )
        return {"num_malicious_nodes": f}
    return {}


def resolve(name: str, family: str, schema: DatasetSchema, secure: bool, clip_norm: float,
            dp: bool = False, model_params: dict[str, Any] | None = None) -> tuple[str, str]:
    """The aggregation a run uses for ``name`` and why; ConfigError when ``newton`` cannot train this run."""
    if secure and not schema.is_classifier and schema.target_max is None:
        raise ConfigError(f"training.secure_aggregation.enabled: schema {schema.name}: {secure_target.NEEDS_BOUNDS}")
    reasons = [newton.unsupported(family, schema) or newton.params_reason(family, model_params or {})]
    if dp:
        reasons.append("differential privacy clips and noises model updates, and newton's replies are gradients "
                       "and Hessians")
    if clip_norm > 0:
        reasons.append("training.clip_norm bounds model updates, and newton's replies are gradients and Hessians")
    reason = "; ".join(r for r in reasons if r)
    if name == "newton" and reason:
        raise ConfigError(f"training.aggregation newton: {reason}")
    if name != "auto":
        return name, "as configured"
    if reason:
        return "fedavg", f"auto: {reason}"
    return "newton", (f"auto: {family} on {newton.n_params(family, schema)} parameters: the pooled objective's "
                      "optimum in a few rounds")


def strategy_keys_unused(name: str, server_learning_rate: float, server_momentum: float) -> str:
    """Why a FedAvgM parameter set in coordinator.yaml would be silently ignored ('' when none is)."""
    for key, value, default in (("server_learning_rate", server_learning_rate, 1.0),
                                ("server_momentum", server_momentum, 0.0)):
        if name not in SERVER_OPTIMISED and value != default:
            return (f"training.{key}: only aggregation fedavgm uses it, not {name}; "
                    "set aggregation: fedavgm or remove it")
    return ""


def strategy_class(name: str) -> type:
    """Flower's strategy class for ``name``."""
    from flwr.serverapp import strategy  # lazy: flwr takes ~1 s to import

    return {
        "newton": strategy.FedAvg,  # FedAvg averages the terms; rounds.RecordingNewton steps
        "fedavg": strategy.FedAvg,
        "fedavgm": strategy.FedAvgM,
        "fedmedian": strategy.FedMedian,
        "fedtrimmedavg": strategy.FedTrimmedAvg,
        "krum": strategy.Krum,
        "multikrum": strategy.MultiKrum,
        "bulyan": strategy.Bulyan,
    }[name]
