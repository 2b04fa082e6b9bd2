"""The dataset schema: shared configuration (feature count, bounds, labels), never data.

The FHE calibration set is drawn from these bounds, so they must be declared,
not measured on anyone's private rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .config import from_dict, load_config
from .errors import ConfigError


@dataclass(frozen=True)
class DatasetSchema:
    """What every owner's rows must look like."""

    name: str
    n_features: int
    feature_min: float
    feature_max: float
    task: Literal["classification", "regression"] = "classification"
    classes: list[int] = field(default_factory=list)
    label_column: str = "label"

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise ConfigError(f"schema {self.name}: n_features must be >= 1")
        if not self.feature_min < self.feature_max:
            raise ConfigError(f"schema {self.name}: feature_min must be below feature_max")
        if self.task == "classification" and len(self.classes) < 2:
            raise ConfigError(f"schema {self.name}: a classification schema needs at least 2 classes")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"schema {self.name}: classes must be distinct")

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

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
        """Uniform rows inside the declared bounds: what Concrete ML calibrates on."""
        rng = np.random.default_rng(seed)
        return rng.uniform(self.feature_min, self.feature_max, size=(n_rows, self.n_features))


DIGITS = DatasetSchema(name="digits", n_features=64, feature_min=0.0, feature_max=16.0, classes=list(range(10)))
FASHION_MNIST = DatasetSchema(
    name="fashion-mnist", n_features=784, feature_min=0.0, feature_max=255.0, classes=list(range(10))
)
# scikit-learn's bundled diabetes data (442 rows, nothing downloaded): ten features, mean-centred and
# scaled by std * sqrt(n_rows) (every value lies in [-0.14, 0.2]), and a disease-progression target (25-346).
DIABETES = DatasetSchema(name="diabetes", n_features=10, feature_min=-0.2, feature_max=0.2, task="regression")
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
