"""The crashes the loader fuzzers found, pinned as plain examples: each now ends in a clean FedfheError.

(Before the fixes most of these raised something else: csv.Error, zlib.error,
ValueError, RecursionError, RuntimeError, OverflowError, OSError,
zipfile.BadZipFile, or loaded an artifact that was edited or unusable.)
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import numpy as np
import pytest
from fuzzing import canonical_json, coordinator_yaml, csv_seed, digits_rows, dump_yaml, idx_seed, owner_yaml

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.manifest import MANIFEST, sha256_file, verify_manifest
from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml import models
from fedfhe_common.ml.data import load_table, read_idx
from fedfhe_common.runtime.config import load_config
from fedfhe_common.runtime.errors import ConfigError, DataError, IntegrityError
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_owner.config import OwnerConfig

pytestmark = pytest.mark.timeout(60)


def _csv_with(tmp_path, insert: bytes) -> bytes:
    seed = csv_seed(tmp_path)
    at = seed.index(b"\n") + 3
    return seed[:at] + insert + seed[at:]


def _idx(code: int, dims: list[int], body: bytes = b"") -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.array(dims, dtype=">u4").tobytes() + body


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


X12, Y12 = digits_rows()
DATA_CASES = {
    "csv field over the csv module's size limit": ("f.csv", lambda t: _csv_with(t, b"1" * 140000)),
    "csv NUL byte": ("f.csv", lambda t: _csv_with(t, b"\x00")),
    "gzip header, corrupt deflate stream": ("f.csv.gz", lambda t: gzip.compress(csv_seed(t))[:12] + b"\xff" * 40),
    "idx with 33 dimensions": ("a-images-idx3-ubyte", lambda t: _idx(0x08, [1] * 33, b"\x01")),
    "idx dimensions whose product overflows int64": (
        "a-images-idx3-ubyte", lambda t: _idx(0x08, [2**32 - 1] * 4 + [0], b"")),
    "idx with a zero dimension": ("a-images-idx3-ubyte", lambda t: _idx(0x08, [0, 8, 8])),
    "npz of complex numbers": ("f.npz", lambda t: _npz(X=X12.astype(complex), y=Y12)),
    "npz of time deltas": ("f.npz", lambda t: _npz(X=X12.astype("m8[s]"), y=Y12)),
    "npz member with a corrupt header": ("f.npz", lambda t: _npz(X=X12, y=Y12).replace(b"'descr'", b"'descx'")),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_data_files(tmp_path, case):
    name, make = DATA_CASES[case]
    (tmp_path / name).write_bytes(make(tmp_path))
    if "idx" in name:
        (tmp_path / "a-labels-idx1-ubyte").write_bytes(idx_seed()[1])
        with pytest.raises(DataError):
            read_idx(tmp_path / name)
    with pytest.raises(DataError):
        load_table(tmp_path / name, DIGITS)


def _yaml_with(tmp_path, role: str, key: str, text: str) -> bytes:
    base = dump_yaml(coordinator_yaml(tmp_path) if role == "coordinator" else owner_yaml(tmp_path)).decode()
    lines = [line for line in base.splitlines() if not line.startswith(f"{key}:")]
    return ("\n".join(lines) + f"\n{key}: {text}\n").encode()


YAML_CASES = {
    "impossible date": ("owner", "seed", "2024-13-45"),
    "decimal int over Python's 4300-digit limit": ("owner", "seed", "9" * 5000),
    "hex int too long to print in a message": ("owner", "owner_id", "0x" + "f" * 4000),
    "int too large for a float": ("owner", "holdout_fraction", "0x" + "f" * 300),
    "NaN for a number": ("owner", "holdout_fraction", ".nan"),
    "nesting deeper than the recursion limit": ("owner", "owner_id", "[" * 3000),
    "home of a user that does not exist": ("owner", "data", "~nosuchuser-fedfhe/x.csv"),
    "NUL byte in a path": ("owner", "data", '"a\\0b.csv"'),
    "mapping key too long to print": ("coordinator", "? 0x" + "f" * 4000 + "\n", "1"),  # explicit key
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_yaml_configs(tmp_path, case):
    role, key, text = YAML_CASES[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(_yaml_with(tmp_path, role, key, text))
    with pytest.raises(ConfigError) as err:
        load_config(CoordinatorConfig if role == "coordinator" else OwnerConfig, path)
    assert str(path) in str(err.value) and len(str(err.value)) < 400


@pytest.fixture
def artifact(tmp_path):
    X, y = digits_rows(60)
    model = models.build("LogisticRegression", {"max_iter": 50})
    models.local_fit(model, "LogisticRegression", X, y, DIGITS)
    coef, icpt = models.get_parameters(model, "LogisticRegression", DIGITS)
    path = tmp_path / "artifact"
    TrainingArtifact("LogisticRegression", DIGITS, coef, icpt, {"max_iter": 50}, {"rounds": 1}).save(path)
    return path


def _reseal(path, family="LogisticRegression") -> None:
    files = {m: sha256_file(path / m) for m in ("params.npz", "model.json", "metrics.json")}
    body = {"kind": "fedfhe-training-artifact", "format_version": 1, "files": files, "family": family}
    (path / MANIFEST).write_bytes(canonical_json(body))


def _set_coef(path, coef) -> None:
    with open(path / "params.npz", "wb") as fh:
        np.savez(fh, coef=coef, intercept=np.zeros(10), classes=np.arange(10))


def _model(path, **changes) -> None:
    model = json.loads((path / "model.json").read_text())
    model.update(changes)
    (path / "model.json").write_text(json.dumps(model))


ARTIFACT_CASES = {
    "member name too long for the file system": lambda p: (p / MANIFEST).write_bytes(canonical_json(
        {"kind": "fedfhe-training-artifact", "format_version": 1, "files": {"n" * 300: "0" * 64}})),
    "manifest nested deeper than the recursion limit": lambda p: (p / MANIFEST).write_bytes(b"[" * 100000),
    "manifest with an int too long to parse": lambda p: (p / MANIFEST).write_bytes(b'{"kind": ' + b"9" * 5000 + b"}"),
    "manifest re-indented (same content)": lambda p: (p / MANIFEST).write_bytes(
        json.dumps(json.loads((p / MANIFEST).read_text()), indent=4).encode()),
    "manifest family edited": lambda p: (p / MANIFEST).write_bytes(
        (p / MANIFEST).read_bytes().replace(b"LogisticRegression", b"LogisticRegressioN")),
    "manifest from a future format": lambda p: (p / MANIFEST).write_bytes(
        (p / MANIFEST).read_bytes().replace(b'"format_version": 1', b'"format_version": 2')),
    "params.npz not a zip, resealed": lambda p: ((p / "params.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64),
                                                 _reseal(p)),
    "NaN parameters, resealed": lambda p: (_set_coef(p, np.full((10, 64), np.nan)), _reseal(p)),
    "text parameters, resealed": lambda p: (_set_coef(p, np.full((10, 64), "a")), _reseal(p)),
    "model.json a list, resealed": lambda p: ((p / "model.json").write_text("[1]"), _reseal(p)),
    "metrics.json a string, resealed": lambda p: ((p / "metrics.json").write_text('"x"'), _reseal(p)),
    "unknown hyper-parameter, resealed": lambda p: (_model(p, params={"": 0}), _reseal(p)),
    "params not an object, resealed": lambda p: (_model(p, params="C=1"), _reseal(p)),
    "family differs from the manifest, resealed": lambda p: (_model(p, family="SGDClassifier"), _reseal(p)),
    "an extra member listed, resealed": lambda p: ((p / "extra.bin").write_bytes(b"x"), (p / MANIFEST).write_bytes(
        canonical_json({**json.loads((p / MANIFEST).read_text()), "files": {
            **json.loads((p / MANIFEST).read_text())["files"], "extra.bin": sha256_file(p / "extra.bin")}}))),
}


@pytest.mark.parametrize("case", sorted(ARTIFACT_CASES))
def test_artifacts(artifact, case):
    ARTIFACT_CASES[case](artifact)
    with pytest.raises(IntegrityError):
        TrainingArtifact.load(artifact)


def test_zip_members_are_not_extracted(artifact):
    """np.load reads NPZ members in memory: a member named like a path never reaches the file system."""
    with zipfile.ZipFile(artifact / "params.npz", "a") as zf:
        zf.writestr("../../escaped.npy", b"\x93NUMPY")
    _reseal(artifact)
    TrainingArtifact.load(artifact)
    assert not (artifact.parent.parent / "escaped.npy").exists()
    with pytest.raises(IntegrityError):
        verify_manifest(artifact, "fedfhe-fhe-bundle")
