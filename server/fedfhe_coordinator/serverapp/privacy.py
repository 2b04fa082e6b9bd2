"""What a training artifact records about the run's protection (secure aggregation, differential privacy)."""

from __future__ import annotations

from typing import Any

from fedfhe_coordinator.run_config import RunConfig


def privacy_summary(run: RunConfig, connected: int, threshold: int | None = None) -> dict[str, Any]:
    """What the artifact says about the run's protection: secure or not, and the DP noise per round."""
    if not run.secure_aggregation:
        return {"secure_aggregation": False}
    out: dict[str, Any] = {"secure_aggregation": True, "owners": connected,
                           "clipping_range": run.secagg_clipping_range, "max_weight": run.secagg_max_weight}
    if threshold is not None:
        out["reconstruction_threshold"] = threshold
    noise = run.dp_noise_multiplier
    if noise > 0:
        norm = run.dp_clipping_norm
        out["dp"] = {"noise_multiplier": noise, "clipping_norm": norm,
                     "noise_stddev_per_round": noise * norm / connected}
    return out
