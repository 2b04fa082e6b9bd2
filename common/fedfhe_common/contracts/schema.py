"""The dataset schema: shared configuration (typed columns, bounds, categories, labels), never data.

Two forms. The typed form (``columns:``) names every column with its kind, its
declared bounds or categories and what a missing cell means; it is what real
tables need. The legacy form (``n_features`` with one ``feature_min``/``feature_max``
for every column) still loads, for pixel data where one range fits all columns.
The FHE calibration set is drawn from the declared bounds, so they must be
declared, never measured on anyone's private rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedfhe_common.runtime.config import from_dict, load_config
from fedfhe_common.runtime.errors import ConfigError

ColumnKind = Literal["numeric", "integer", "boolean", "categorical"]
MissingRule = Literal["refuse", "value", "mean", "mode"]
DEFAULT_MISSING_MARKERS = ["", "NA", "N/A", "NaN", "nan", "null", "?"]
TRUE_WORDS = ("true", "yes", "1", "y", "t")
FALSE_WORDS = ("false", "no", "0", "n", "f")


def category_text(value: Any, where: str) -> str:
    """Categories compare as text (a CSV cell is text); YAML's bare yes/no would silently become booleans."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is a YAML boolean; quote it (\"yes\", \"true\") to use it as a category")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: categories must be strings or numbers, got {type(value).__name__}")
    return str(value)


@dataclass(frozen=True)
class ColumnSpec:
    """One named column: its kind, declared bounds or categories, and what a missing cell means.

    ``missing``: ``refuse`` (the default: a gap is an error), ``value`` (``fill`` is used),
    ``mean`` (numeric: the federation's mean) or ``mode`` (boolean, categorical: the
    federation's most frequent value). ``unknown``: a category outside the list is
    refused, or (``ignore``) encoded as no category at all.
    """

    name: str
    kind: ColumnKind = "numeric"
    min: float | None = None
    max: float | None = None
    categories: list[Any] = field(default_factory=list)
    missing: MissingRule = "refuse"
    fill: Any = None
    unknown: Literal["refuse", "ignore"] = "refuse"

    def __post_init__(self) -> None:
        where = f"column {self.name!r}"
        if not self.name or self.name != self.name.strip():
            raise ConfigError(f"{where}: a column needs a name without surrounding spaces")
        if self.kind in ("numeric", "integer"):
            if self.min is None or self.max is None:
                raise ConfigError(f"{where}: a {self.kind} column needs declared min and max")
            if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
                raise ConfigError(f"{where}: min must be below max (got {self.min}, {self.max})")
            if self.categories:
                raise ConfigError(f"{where}: categories belong to categorical columns")
            if self.missing == "mode":
                raise ConfigError(f"{where}: missing: mode is for boolean and categorical columns; use mean or value")
        else:
            if self.min is not None or self.max is not None:
                raise ConfigError(f"{where}: min and max belong to numeric and integer columns")
            if self.missing == "mean":
                raise ConfigError(f"{where}: missing: mean is for numeric columns; use mode or value")
        if self.kind == "categorical":
            cats = [category_text(c, f"{where}: categories[{i}]") for i, c in enumerate(self.categories)]
            if len(cats) < 2:
                raise ConfigError(f"{where}: a categorical column needs at least 2 categories")
            if len(set(cats)) != len(cats):
                raise ConfigError(f"{where}: categories must be distinct")
            object.__setattr__(self, "categories", cats)
        elif self.unknown != "refuse":
            raise ConfigError(f"{where}: unknown: applies to categorical columns only")
        if self.missing == "value":
            object.__setattr__(self, "fill", self._checked_fill(where))
        elif self.fill is not None:
            raise ConfigError(f"{where}: fill is used only with missing: value")

    def _checked_fill(self, where: str) -> Any:
        if self.fill is None:
            raise ConfigError(f"{where}: missing: value needs a fill value")
        if self.kind == "categorical":
            text = category_text(self.fill, f"{where}: fill")
            if text not in self.categories:
                raise ConfigError(f"{where}: fill {text!r} is not one of the categories {self.categories}")
            return text
        if self.kind == "boolean":
            if not isinstance(self.fill, bool):
                raise ConfigError(f"{where}: fill of a boolean column must be true or false")
            return self.fill
        if isinstance(self.fill, bool) or not isinstance(self.fill, (int, float)):
            raise ConfigError(f"{where}: fill must be a number")
        assert self.min is not None and self.max is not None
        if not self.min <= float(self.fill) <= self.max:
            raise ConfigError(f"{where}: fill {self.fill} lies outside [{self.min}, {self.max}]")
        return float(self.fill)

    @property
    def width(self) -> int:
        """Model inputs this column becomes: one, or one per category (one-hot)."""
        return len(self.categories) if self.kind == "categorical" else 1

    def encoded_names(self) -> list[str]:
        return [f"{self.name}={c}" for c in self.categories] if self.kind == "categorical" else [self.name]

    def bounds(self) -> tuple[float, float]:
        """Declared raw range of each encoded input (one-hot and booleans are 0/1)."""
        if self.kind in ("numeric", "integer"):
            assert self.min is not None and self.max is not None
            return float(self.min), float(self.max)
        return 0.0, 1.0


@dataclass(frozen=True)
class DatasetSchema:
    """What every owner's rows must look like.

    Typed form: ``columns`` (matched by name, in any order), ``label_column``,
    ``classes`` (strings or integers) or, for regression, ``target_min``/``target_max``.
    ``n_features`` is then the model's input width after one-hot encoding, computed.
    """

    name: str
    n_features: int = 0
    feature_min: float = 0.0
    feature_max: float = 0.0
    task: Literal["classification", "regression"] = "classification"
    classes: list[Any] = field(default_factory=list)  # integers or strings; checked in __post_init__
    label_column: str = "label"
    columns: list[ColumnSpec] = field(default_factory=list)
    target_min: float | None = None
    target_max: float | None = None
    scaling: Literal["standard", "none"] = "standard"
    missing_markers: list[str] = field(default_factory=lambda: list(DEFAULT_MISSING_MARKERS))
    ignore_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.columns:
            self._check_typed()
        else:
            if self.n_features < 1:
                raise ConfigError(f"schema {self.name}: n_features must be >= 1 (or declare typed columns:)")
            if not self.feature_min < self.feature_max:
                raise ConfigError(f"schema {self.name}: feature_min must be below feature_max")
        if self.task == "classification" and len(self.classes) < 2:
            raise ConfigError(f"schema {self.name}: a classification schema needs at least 2 classes")
        if self.task == "regression" and self.classes:
            raise ConfigError(f"schema {self.name}: a regression schema has no classes (declare target_min/max)")
        for c in self.classes:
            if isinstance(c, bool):
                raise ConfigError(f"schema {self.name}: class {c!r} is a YAML boolean; quote it "
                                  "(bare yes/no/true/false become booleans)")
            if not isinstance(c, (int, str)):
                raise ConfigError(f"schema {self.name}: classes must be integers or strings, got {c!r}")
        if len({str(c) for c in self.classes}) != len(self.classes):
            raise ConfigError(f"schema {self.name}: classes must be distinct")
        if (self.target_min is None) != (self.target_max is None):
            raise ConfigError(f"schema {self.name}: declare both target_min and target_max, or neither")
        if self.target_min is not None and not self.target_min < self.target_max:  # type: ignore[operator]
            raise ConfigError(f"schema {self.name}: target_min must be below target_max")
        if self.target_min is not None and self.is_classifier:
            raise ConfigError(f"schema {self.name}: target bounds apply to regression only")

    def _check_typed(self) -> None:
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"schema {self.name}: columns declared twice: {', '.join(dup)}")
        if self.label_column in names:
            raise ConfigError(f"schema {self.name}: the label column {self.label_column!r} is also a feature column")
        clash = sorted(set(self.ignore_columns) & (set(names) | {self.label_column}))
        if clash:
            raise ConfigError(f"schema {self.name}: ignore_columns names declared columns: {', '.join(clash)}")
        width = sum(c.width for c in self.columns)
        if self.n_features not in (0, width):
            raise ConfigError(f"schema {self.name}: n_features {self.n_features} differs from the {width} model "
                              "inputs the columns make (one per numeric, integer or boolean column, one per category)")
        object.__setattr__(self, "n_features", width)
        object.__setattr__(self, "feature_min", 0.0)
        object.__setattr__(self, "feature_max", 0.0)
        object.__setattr__(self, "classes", [c if isinstance(c, int) else str(c) for c in self.classes])

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    @property
    def typed(self) -> bool:
        return bool(self.columns)

    @property
    def label_codes(self) -> list[int]:
        """The labels models are trained on: the classes themselves when all are integers, else 0..k-1."""
        if all(isinstance(c, int) for c in self.classes):
            return [int(c) for c in self.classes]
        return list(range(len(self.classes)))

    def decode_labels(self, codes: np.ndarray) -> np.ndarray:
        """Model labels back to the declared classes (identity for integer classes)."""
        codes = np.asarray(codes)
        if all(isinstance(c, int) for c in self.classes):
            return codes
        lookup = dict(zip(self.label_codes, self.classes, strict=True))
        return np.asarray([lookup[int(v)] for v in codes])

    def feature_names(self) -> list[str]:
        """Names of the model's inputs (``name=category`` for one-hot inputs)."""
        if not self.typed:
            return [f"f{i}" for i in range(self.n_features)]
        return [n for c in self.columns for n in c.encoded_names()]

    def input_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Declared raw range of each model input, before the preprocessing's scaling."""
        if not self.typed:
            return np.full(self.n_features, self.feature_min), np.full(self.n_features, self.feature_max)
        pairs = [c.bounds() for c in self.columns for _ in range(c.width)]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: object, where: str = "schema") -> DatasetSchema:
        return from_dict(cls, data, where)

    @classmethod
    def load(cls, path: str | Path) -> DatasetSchema:
        return load_config(cls, path)

    def calibration_set(self, n_rows: int = 200, seed: int = 0) -> np.ndarray:
        """Uniform rows inside the declared raw bounds (legacy schemas: what Concrete ML calibrates on)."""
        rng = np.random.default_rng(seed)
        lo, hi = self.input_bounds()
        return rng.uniform(lo, hi, size=(n_rows, self.n_features))


DIGITS = DatasetSchema(name="digits", n_features=64, feature_min=0.0, feature_max=16.0, classes=list(range(10)))
FASHION_MNIST = DatasetSchema(
    name="fashion-mnist", n_features=784, feature_min=0.0, feature_max=255.0, classes=list(range(10))
)
# scikit-learn's bundled diabetes data (442 rows, nothing downloaded): ten features, mean-centred and
# scaled by std * sqrt(n_rows) (every value lies in [-0.14, 0.2]), and a disease-progression target (25-346:
# declared, so SecAgg+ can carry a regressor's parameters, fedfhe_common.ml.secure_target).
DIABETES = DatasetSchema(name="diabetes", n_features=10, feature_min=-0.2, feature_max=0.2, task="regression",
                         target_min=25.0, target_max=346.0)
BUILTIN_SCHEMAS = {s.name: s for s in (DIGITS, FASHION_MNIST, DIABETES)}


def resolve_schema(name_or_path: str) -> DatasetSchema:
    """A built-in schema by name, or a YAML schema file by path."""
    if name_or_path in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(sorted(BUILTIN_SCHEMAS))
        raise ConfigError(f"schema {name_or_path!r}: not a built-in schema ({known}) and no such file")
    return DatasetSchema.load(path)
