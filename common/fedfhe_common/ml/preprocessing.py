"""One preprocessing, defined by the schema and the federation's statistics, applied the same way everywhere.

Loading a table (``fedfhe_common.ml.data``) encodes it without any statistic:
numbers as floats, booleans as 0/1, categories one-hot, a missing cell as NaN.
``Preprocessing.transform`` then fills the gaps (a declared value, or the
federation's mean or mode) and standardises numeric inputs. Every owner's fit,
the coordinator's evaluation, ``train-local``, the centralised reference and
``predict`` (before encryption) call the same ``transform``; the statistics
travel in the run config, then in the signed training artifact and the bundle's
signed manifest, so an owner predicts with exactly what the model was trained with.

Statistics come from the federation as sums, never rows: each owner sends, per
model input, the fraction of its rows with a value and the means of ``z`` and
``z**2`` over them, where ``z`` maps the declared bounds onto [0, 1]. Weighted by
row counts, these average (FedAvg, or SecAgg+'s masked sum) into the pooled mean
and variance. Every entry lies in [0, 1], so SecAgg+'s clipping range of 1 holds them.

Why standardise on the owner's side rather than fold it into the coefficients:
Concrete ML quantises each input column on its own range, and an affine map of
one column leaves that quantisation unchanged, so folding gains no accuracy; the
owner must run the transform anyway (one-hot, imputation), and unfolded
coefficients stay the ones the federation averaged and the report shows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.runtime.errors import DataError, IntegrityError

FORMAT = 1


def moments(X: np.ndarray, schema: DatasetSchema) -> np.ndarray:
    """One owner's statistics vector (3 x inputs, every entry in [0, 1]); its weight is ``len(X)``.

    ``[present fraction | mean of z over all rows (0 where missing) | mean of z**2 likewise]``.
    """
    lo, hi = schema.input_bounds()
    X = np.asarray(X, dtype=np.float64)
    present = ~np.isnan(X)
    z = np.where(present, (np.nan_to_num(X) - lo) / (hi - lo), 0.0)
    z = np.clip(z, 0.0, 1.0)
    n = max(1, len(X))
    return np.concatenate([present.sum(axis=0) / n, z.sum(axis=0) / n, (z * z).sum(axis=0) / n])


def check_moments(vector: Any, schema: DatasetSchema, tolerance: float = 1e-6) -> np.ndarray:
    """A statistics vector from another host: the right length, finite, inside [0, 1] (ValueError otherwise).

    ``tolerance``: how far outside [0, 1] a value may lie before it is refused (then clipped):
    SecAgg+'s unmasked average carries quantisation error (see ``SECURE_SUM_TOLERANCE``).
    """
    v = np.asarray(vector)
    if v.dtype.kind not in "fiu" or v.shape != (3 * schema.n_features,):
        raise ValueError(f"statistics must be {3 * schema.n_features} numbers, got {v.dtype} of shape {v.shape}")
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)) or v.min(initial=0) < -tolerance or v.max(initial=0) > 1 + tolerance:
        raise ValueError("statistics must be finite fractions in [0, 1]")
    return np.clip(v, 0.0, 1.0)


# SecAgg+ quantises weight/max_weight times each value into steps of 2c/Q: with 3 owners of 80 rows,
# max_weight 10000, c = 8 and Q = 2**22, the average is off by up to ~2e-4 per value.
SECURE_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class Preprocessing:
    """Per model input: the value a gap becomes (raw units), then ``(x - center) / scale``."""

    schema: DatasetSchema
    center: np.ndarray
    scale: np.ndarray
    fill: np.ndarray  # NaN where the schema refuses gaps

    # ---- built ---------------------------------------------------------------
    @classmethod
    def identity(cls, schema: DatasetSchema) -> Preprocessing:
        """Legacy schemas: the rows go to the model as they are."""
        n = schema.n_features
        return cls(schema, np.zeros(n), np.ones(n), np.full(n, np.nan))

    @classmethod
    def from_moments(cls, schema: DatasetSchema, vector: np.ndarray) -> Preprocessing:
        """From the pooled (row-weighted average) statistics vector."""
        if not schema.typed:
            return cls.identity(schema)
        v = check_moments(vector, schema)
        n = schema.n_features
        present, m1, m2 = v[:n], v[n:2 * n], v[2 * n:]
        lo, hi = schema.input_bounds()
        span = hi - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            mz = np.where(present > 0, m1 / np.maximum(present, 1e-12), 0.5)
            vz = np.where(present > 0, m2 / np.maximum(present, 1e-12) - mz * mz, 0.0)
        mean = lo + span * np.clip(mz, 0.0, 1.0)
        std = span * np.sqrt(np.clip(vz, 0.0, None))
        center, scale, fill = np.zeros(n), np.ones(n), np.full(n, np.nan)
        at = 0
        for col in schema.columns:
            block = slice(at, at + col.width)
            at += col.width
            if col.kind in ("numeric", "integer"):
                if schema.scaling == "standard":
                    center[block] = mean[block]
                    # A constant column (or one nobody has values of) keeps a quarter of its declared range.
                    scale[block] = std[block] if std[block][0] > 1e-9 * span[block][0] else span[block] / 4
                if col.missing == "mean":
                    fill[block] = mean[block]
            if col.missing == "value":
                if col.kind == "categorical":
                    fill[block] = [1.0 if c == col.fill else 0.0 for c in col.categories]
                else:
                    fill[block] = float(col.fill)
            elif col.missing == "mode":
                if col.kind == "categorical":
                    fill[block] = np.eye(col.width)[int(np.argmax(mean[block]))]
                else:
                    fill[block] = 1.0 if mean[block][0] >= 0.5 else 0.0
        return cls(schema, center, scale, fill)

    @classmethod
    def local(cls, schema: DatasetSchema, X: np.ndarray) -> Preprocessing:
        """From one site's rows (train-local, the centralised reference): the same statistics, pooled here."""
        return cls.from_moments(schema, moments(X, schema))

    # ---- applied -------------------------------------------------------------
    def transform(self, X: np.ndarray, where: object = "rows") -> np.ndarray:
        """Loaded rows (NaN = missing) to model inputs; a gap the schema refuses is a DataError."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.schema.n_features:
            raise DataError(where, f"rows need {self.schema.n_features} inputs, got shape {X.shape}")
        gaps = np.isnan(X)
        if gaps.any():
            if np.isnan(self.fill[gaps.any(axis=0)]).any():
                r, c = np.argwhere(gaps & np.isnan(self.fill))[0]
                raise DataError(where, f"row {r + 1}, input {self.schema.feature_names()[c]!r}: missing, and the "
                                       "schema refuses gaps there")
            X = np.where(gaps, self.fill, X)
        if not self.schema.typed:
            return X
        return (X - self.center) / self.scale

    def calibration_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each model input's declared range after the transform: what FHE calibration spans, per column."""
        lo, hi = self.schema.input_bounds()
        return (lo - self.center) / self.scale, (hi - self.center) / self.scale

    def largest_input(self) -> float:
        """The largest |model input| the declared bounds allow after the transform (newton's term bounds)."""
        lo, hi = self.calibration_bounds()
        return float(np.max(np.abs(np.concatenate([np.ravel(lo), np.ravel(hi)]))))

    def calibration_set(self, rows: int, seed: int = 0) -> np.ndarray:
        """Uniform rows per input inside its transformed bounds; one-hot blocks get one category per row."""
        rng = np.random.default_rng(seed)
        lo, hi = self.calibration_bounds()
        X = rng.uniform(lo, hi, size=(rows, self.schema.n_features))
        at = 0
        for col in self.schema.columns:
            if col.kind in ("categorical", "boolean"):
                block = slice(at, at + col.width)
                if col.kind == "categorical":
                    X[:, block] = np.eye(col.width)[rng.integers(0, col.width, rows)]
                else:
                    X[:, block] = rng.integers(0, 2, (rows, 1))
            at += col.width
        return X

    # ---- carried in artifacts and manifests -----------------------------------
    def to_dict(self) -> dict[str, Any]:
        def numbers(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {"format": FORMAT, "inputs": self.schema.feature_names(), "center": numbers(self.center),
                "scale": numbers(self.scale), "fill": numbers(self.fill)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, schema: DatasetSchema, data: Any, where: str = "preprocessing") -> Preprocessing:
        """Read back what ``to_dict`` wrote, checked against the schema (IntegrityError otherwise)."""
        if data is None:
            if schema.typed:
                raise IntegrityError(f"{where}: missing, and schema {schema.name!r} is typed (its rows need scaling)")
            return cls.identity(schema)
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a format-{FORMAT} preprocessing object")
            if data.get("inputs") != schema.feature_names():
                raise ValueError("its inputs differ from the schema's columns")
            arrays = [np.array([np.nan if v is None else float(v) for v in data[k]], dtype=np.float64)
                      for k in ("center", "scale", "fill")]
        except (ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(f"{where}: {str(exc)[:200]}") from None
        center, scale, fill = arrays
        n = schema.n_features
        if any(a.shape != (n,) for a in arrays):
            raise IntegrityError(f"{where}: center, scale and fill need {n} entries each")
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise IntegrityError(f"{where}: center must be finite and scale finite and positive")
        if np.isinf(fill).any():
            raise IntegrityError(f"{where}: fill values must be finite")
        out = cls(schema, center, scale, fill)
        if not schema.typed and out.to_dict() != cls.identity(schema).to_dict():
            raise IntegrityError(f"{where}: a legacy schema's preprocessing is the identity")
        return out


def needs_statistics(schema: DatasetSchema) -> bool:
    """Typed schemas need the federation's statistics before training; legacy ones take rows as they are."""
    return schema.typed
