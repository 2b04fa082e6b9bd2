"""fedfhe_owner.api: a DataFrame becomes model inputs exactly as the same rows in a CSV file would (issue 28).

The encrypted round trip of ``Predictor`` runs against a real inference node in
tests/loopback/test_inference_e2e.py; here, the encoding an application's DataFrame goes through.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.ml.data import load_typed
from fedfhe_common.runtime.errors import DataError
from fedfhe_owner.api import frame_rows

PENGUINS = resolve_schema(str(Path(__file__).resolve().parents[2] / "testbed/fedfhe_testbed/schemas/penguins.yaml"))
ROWS = [
    {"island": "Biscoe", "bill_length_mm": 45.1, "bill_depth_mm": 14.5, "flipper_length_mm": 215,
     "body_mass_g": 5000, "sex": "female", "year": 2008},
    {"island": "Dream", "bill_length_mm": None, "bill_depth_mm": 18.4, "flipper_length_mm": 195,
     "body_mass_g": 3900, "sex": None, "year": 2009},
]


def test_a_dataframe_encodes_as_the_same_rows_in_a_csv(tmp_path):
    frame = pd.DataFrame(ROWS)[list(reversed(list(ROWS[0])))]  # columns by name, in any order
    csv = tmp_path / "rows.csv"
    header = list(ROWS[0])
    csv.write_text(",".join(header) + "\n" + "\n".join(
        ",".join("" if r[c] is None else str(r[c]) for c in header) for r in ROWS) + "\n")
    expected, _ = load_typed(csv, PENGUINS, need_label=False)
    got = frame_rows(frame, PENGUINS)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))  # gaps stay gaps, for the model's fill
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(expected))
    assert got.shape == (2, PENGUINS.n_features)


def test_a_cell_that_breaks_the_schema_is_named_with_its_row():
    bad = pd.DataFrame([{**ROWS[0], "island": "Atlantis"}, ROWS[1]])
    with pytest.raises(DataError, match="Atlantis"):
        frame_rows(bad, PENGUINS)
    with pytest.raises(DataError, match="sex"):
        frame_rows(pd.DataFrame(ROWS).drop(columns=["sex"]), PENGUINS)


def test_a_legacy_schemas_frame_is_taken_by_its_feature_names():
    schema = DatasetSchema(name="legacy", n_features=3, feature_min=0, feature_max=1, task="regression")
    names = schema.feature_names()
    frame = pd.DataFrame([[0.1, 0.2, 0.3]], columns=names)[list(reversed(names))]
    np.testing.assert_allclose(frame_rows(frame, schema), [[0.1, 0.2, 0.3]])
