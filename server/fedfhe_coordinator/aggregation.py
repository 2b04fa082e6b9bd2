"""Which Flower 1.39 strategy aggregates the owners' replies, and its checked parameters.

The names are what an operator writes in coordinator.yaml (``training.aggregation``).
Each maps to Flower's own strategy class; fedfhe never reimplements the
aggregation rule, it only checks the parameters against the run's node count so
a misconfigured run fails when the config is loaded, not in round 1.
"""

from __future__ import annotations

from typing import Any, Literal

from fedfhe_common.errors import ConfigError

Aggregation = Literal["fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"]
AGGREGATIONS: tuple[str, ...] = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


def strategy_kwargs(
    name: str, min_nodes: int, num_malicious_nodes: int = 0, trimmed_fraction: float = 0.2,
    multikrum_select: int = 0,
) -> dict[str, Any]:
    """The extra keyword arguments of Flower's strategy ``name``; ConfigError when they cannot work.

    The bounds are those the strategies need to aggregate at all: Krum scores each
    reply by its n - f - 2 nearest neighbours, Bulyan needs n >= 4f + 3.
    """
    if name not in AGGREGATIONS:
        raise ConfigError(f"training.aggregation: must be one of {', '.join(AGGREGATIONS)}, got {name!r}")
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


def strategy_class(name: str) -> type:
    """Flower's strategy class for ``name``."""
    from flwr.serverapp import strategy

    return {
        "fedavg": strategy.FedAvg,
        "fedmedian": strategy.FedMedian,
        "fedtrimmedavg": strategy.FedTrimmedAvg,
        "krum": strategy.Krum,
        "multikrum": strategy.MultiKrum,
        "bulyan": strategy.Bulyan,
    }[name]
