"""What a training artifact records about the run's protection (secure aggregation, differential privacy)."""

from __future__ import annotations

from typing import Any

from fedfhe_common import fl_contract as fc


def privacy_summary(cfg: Any, connected: int, threshold: int | None = None) -> dict[str, Any]:
    """What the artifact says about the run's protection: secure or not, and the DP noise per round."""
    if not bool(cfg.get(fc.RUN_SECURE, False)):
        return {"secure_aggregation": False}
    out: dict[str, Any] = {"secure_aggregation": True, "owners": connected,
                           "clipping_range": float(cfg[fc.RUN_SECAGG_CLIPPING_RANGE]),
                           "max_weight": float(cfg[fc.RUN_SECAGG_MAX_WEIGHT])}
    if threshold is not None:
        out["reconstruction_threshold"] = threshold
    noise = float(cfg[fc.RUN_DP_NOISE_MULTIPLIER])
    if noise > 0:
        norm = float(cfg["dp-clipping-norm"])
        out["dp"] = {"noise_multiplier": noise, "clipping_norm": norm,
                     "noise_stddev_per_round": noise * norm / connected}
    return out
