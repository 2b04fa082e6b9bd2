"""An owner's encrypted predictions as a Python call: what ``fedfhe-owner predict`` does, without files.

    from fedfhe_owner.api import Predictor

    with Predictor("/etc/fedfhe/owner.yaml") as predictor:
        labels = predictor.predict(rows)  # a NumPy array in the schema's input order, or a DataFrame

An ML engineer's application reaches predictions the way Concrete ML's ``FHEModelClient`` users
expect, without writing rows to disk. Everything else is the CLI's: the client specs are verified
against ``release.pub`` before Concrete ML reads them, FHE keys are made on first use under the
owner's ``state_dir`` and uploaded once per model version, and rows pass the model's own
preprocessing (its signed statistics) before they are encrypted.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.contracts.typed_table import encode_rows, refuse
from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_owner import config as owner_config
from fedfhe_owner.predict.encrypted import (
    PredictResult,
    check_own_schema,
    predict_rows,
    resolve_for_predict,
    signed_schema,
)
from fedfhe_owner.predict.inference_client import InferenceClient


def endpoint_of(cfg: owner_config.OwnerConfig, path: Path) -> owner_config.InferenceEndpoint:
    """owner.yaml's inference section, or a ConfigError naming the file."""
    if cfg.inference is None:
        raise ConfigError(f"{path}: no 'inference' section (address, certfile, keyfile, ca_certfile)")
    return cfg.inference


def _cell(value: Any) -> str:
    """A DataFrame cell as the CSV reader would see it (None and NaN are gaps)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    return str(value)


def frame_rows(frame: Any, schema: DatasetSchema) -> np.ndarray:
    """A DataFrame's rows as model inputs: its columns by name, encoded exactly as a CSV file's would be
    (categories one-hot, booleans, gaps); every cell that breaks the schema is named, with its row."""
    header = [str(c) for c in frame.columns]
    if not schema.typed:
        missing = [n for n in schema.feature_names() if n not in header]
        if missing:
            raise FedfheError(f"the DataFrame lacks the schema's columns {', '.join(missing[:5])}")
        return frame[schema.feature_names()].to_numpy(dtype=np.float64)
    rows = ((i + 1, [_cell(v) for v in record]) for i, record in enumerate(frame.itertuples(index=False)))
    table = encode_rows(Path("<DataFrame>"), header, rows, schema, need_label=False)
    if table.problems:
        raise refuse(Path("<DataFrame>"), table.problems)
    return table.X


class Predictor:
    """Encrypted predictions from one model version, for the owner that ``owner.yaml`` describes.

    ``model`` and ``version`` default to owner.yaml's ``inference.model_id`` and the node's newest
    version; the one resolved is kept, so every call of this object uses the same model.
    """

    def __init__(self, config: str | Path, *, model: str = "", version: str = "", progress: bool = False,
                 batch_size: int | None = None) -> None:
        path = Path(config)
        self.config = owner_config.load(path)
        self.endpoint = endpoint_of(self.config, path)
        self.progress, self.batch_size = progress, batch_size
        self._client = InferenceClient(self.endpoint)
        try:
            self.info = resolve_for_predict(self._client, self.config.state_dir, model or self.endpoint.model_id,
                                            version)
            self.schema = signed_schema(self.endpoint, self.config.state_dir, self._client, self.info)
            own = resolve_schema(self.config.schema)
            if own.typed or self.schema.typed:
                check_own_schema(own, self.schema, f"{self.info.model_id} {self.info.version}")
        except BaseException:
            self._client.close()
            raise

    @property
    def model(self) -> tuple[str, str]:
        """(model id, version) this predictor serves."""
        return self.info.model_id, self.info.version

    def inputs(self, rows: Any) -> np.ndarray:
        """Model inputs from a NumPy array (already in the schema's input order) or a DataFrame (named columns)."""
        if hasattr(rows, "columns") and hasattr(rows, "itertuples"):
            return frame_rows(rows, self.schema)
        return np.asarray(rows, dtype=np.float64)

    def predict_result(self, rows: Any) -> PredictResult:
        """Everything the CLI reports: predictions, probabilities or values, timings, bytes, the key id."""
        return predict_rows(self.endpoint, self.config.state_dir, self.inputs(rows), model_id=self.info.model_id,
                            version=self.info.version, batch_size=self.batch_size, progress=self.progress,
                            client=self._client)

    def predict(self, rows: Any) -> np.ndarray:
        """Decrypted predictions: class labels as the schema names them, or a regressor's values."""
        return np.asarray(self.predict_result(rows).predictions)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
