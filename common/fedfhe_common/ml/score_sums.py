"""Held-out scores under SecAgg+: an owner's scores reach the coordinator only inside the masked sum (issue 25).

In a plain run each owner reports its held-out loss and accuracy (or R²) and their row count in the
clear; the coordinator sees each owner's, and one query per class gives an owner's label histogram.
In a secure run the owner instead appends one array to the parameters it hands to Flower's
``secaggplus_mod`` (``fedfhe_owner.clientapp.secure_client.seal_scores``), and its clear metrics keep only its
weight and fit seconds. The coordinator splits the array off the unmasked aggregate and reads from
it only what the sum over the owners gives: the federation's row-weighted scores, the plain run's
``client_scores`` exactly, up to SecAgg+'s quantisation.

The array, for the schema's scores in ``fl_contract.score_names`` order (L = len(LADDER) magnitudes
B_j = 10**j), every entry multiplied by ``clipping_range`` and each row count divided by ``max_weight``:

    [n]                                          n: held-out rows, capped at max_weight
    per score s: [n if s is defined else 0]      (an undefined log-loss: NaN in a plain reply)
                 [1 if |s| > B_j else 0  for j]  an owner count: which magnitudes the sum may be read at
                 [n * clip(s, ±B_j) / B_j  for j]

So every entry of an honest owner's array lies within ±clipping_range and nothing is clipped by
Flower. The coordinator reads each score at the finest magnitude no owner exceeded (its owner count
sums to 0), so a score of any size is read at a scale at most 10 times coarser than its own;
beyond 10**12 the score is read clipped there.

What SecAgg+ does to the array, and how it is undone: Flower multiplies an owner's parameters by
``d = round(weight / max_weight * Q) / Q`` (Q the quantisation range, ``weight_factor``) before it
quantises them, and the coordinator's workflow divides the sum by ``D = sum of d`` over the owners.
The owner sends ``array / d``, so Flower's product is the array itself and the workflow hands the
coordinator ``sum(array) / D``; the coordinator knows every owner's weight (it travels in the clear,
capped at max_weight), computes D the same way (``total_factor``) and multiplies back. Each entry
of the sum is then off by less than one quantisation step per owner, ``2 * clipping_range / Q``: in
score units, ``2 * max_weight * B_j / (Q * rows)`` per owner at magnitude B_j.

What the coordinator learns: the federation's held-out row count, each score's row-weighted sum,
and, per score and magnitude, how many owners' scores exceed it. The factors are constants of the
run config (both sides compute them, none travels), so a coordinator cannot scale one owner's array
apart from the others'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LADDER: tuple[float, ...] = tuple(10.0**j for j in range(13))
# A flag sum below this is read as no owner above the magnitude (honest sums are whole numbers of owners).
HALF = 0.5


def layout_length(names: Sequence[str]) -> int:
    """Entries of the array for scores ``names`` (fl_contract.score_names)."""
    return 1 + len(names) * (1 + 2 * len(LADDER))


def weight_factor(weight: float, max_weight: float, quantization_range: int) -> float:
    """What Flower's secaggplus_mod multiplies an owner's parameters by (its ``dq_ratio``), exactly as it does."""
    ratio = weight / max_weight
    return round(ratio * quantization_range) / quantization_range


def total_factor(weights: Sequence[float], max_weight: float, quantization_range: int) -> float:
    """What SecAggPlusWorkflow divides the unmasked sum by: the owners' factors added up (its ``q_total_ratio``)."""
    return sum(round(w / max_weight * quantization_range) for w in weights) / quantization_range


def pack(scores: dict[str, float], names: Sequence[str], rows: int, max_weight: float,
         clipping_range: float) -> np.ndarray:
    """One owner's array (the module's layout) before Flower's weighting: every entry within ±clipping_range."""
    if set(scores) != set(names):
        raise ValueError(f"scores {sorted(scores)} are not the run's {sorted(names)}")
    n = float(min(max(int(rows), 0), int(max_weight)))
    unit = clipping_range / max_weight
    out = [n * unit]
    for name in names:
        value = float(scores[name])
        defined = math.isfinite(value)
        out.append(n * unit if defined else 0.0)
        out.extend(clipping_range if defined and abs(value) > b else 0.0 for b in LADDER)
        out.extend(n * unit * float(np.clip(value, -b, b)) / b if defined else 0.0 for b in LADDER)
    return np.asarray(out, dtype=np.float64)


def unpack(sums: np.ndarray, names: Sequence[str], owners: int, max_weight: float, clipping_range: float,
           quantization_range: int) -> dict[str, float]:
    """The federation's scores from the sum of the owners' arrays: {name: row-weighted score, "examples": rows}.

    A score no owner defined is left out; no rows at all gives {}. ValueError when the sum is not one
    honest owners can make (a count beyond its bounds, a value not finite): a hostile owner's array.
    """
    sums = np.asarray(sums, dtype=np.float64).ravel()
    if sums.shape != (layout_length(names),):
        raise ValueError(f"the score sums have {sums.size} entries, the run's layout {layout_length(names)}")
    if not np.all(np.isfinite(sums)):
        raise ValueError("the score sums are not finite")
    unit = clipping_range / max_weight
    # Rounding: under one step (2 x range / levels) per owner and entry, in rows that is 2 x max_weight / levels.
    slack = HALF + owners * 2.0 * max_weight / quantization_range
    rows = float(sums[0]) / unit
    if rows < -slack or rows > owners * max_weight + slack:
        raise ValueError(f"the score sums hold {rows:.6g} held-out rows from {owners} owners")
    if rows < HALF:
        return {}
    out: dict[str, float] = {}
    size = 1 + 2 * len(LADDER)
    for k, name in enumerate(names):
        part = sums[1 + k * size: 1 + (k + 1) * size]
        defined = float(part[0]) / unit
        above = part[1: 1 + len(LADDER)] / clipping_range
        values = part[1 + len(LADDER):] / unit
        if defined < -slack or defined > rows + slack or np.any(above < -HALF) or np.any(above > owners + HALF):
            raise ValueError(f"the score sums of {name} are not what honest owners send")
        if defined < HALF:
            continue
        j = next((j for j, count in enumerate(above) if count < HALF), len(LADDER) - 1)
        out[name] = float(values[j]) * LADDER[j] / round(defined)
    out["examples"] = float(round(rows))  # whole rows; each owner's count is off by 2 x max_weight / levels (0.005)
    return out
