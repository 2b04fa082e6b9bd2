"""Fuzz every file loader: random and mutated files give a result or a clean FedfheError, nothing else.

Seeds are valid files (CSV, CSV.gz, NPZ stored and deflated, IDX images and
labels, coordinator/owner/schema YAML, a training artifact with its manifest);
mutations flip, set, insert, delete, truncate and duplicate bytes and splice in
tokens that steer each format into its corners. Any exception other than a
FedfheError subclass fails the test; pytest-timeout fails a hang.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fuzzing import (
    SCALE,
    bytes_or_mutation,
    canonical_json,
    clean,
    coordinator_yaml,
    csv_seed,
    digits_rows,
    dump_yaml,
    fuzz_settings,
    gz,
    idx_seed,
    npz_seed,
    owner_yaml,
    perturbed_mapping,
    schema_yaml,
)
from hypothesis import given
from hypothesis import strategies as st

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.manifest import MANIFEST, sha256_file, verify_manifest
from fedfhe_common.contracts.schema import DIGITS, DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.ml.data import load_table, read_idx
from fedfhe_common.runtime.config import load_config
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_owner.config import OwnerConfig

pytestmark = pytest.mark.timeout(60 * SCALE)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def seeds(work):
    img, lab = idx_seed()
    return {
        "csv": csv_seed(work),
        "npz": npz_seed(compressed=False),
        "npz.z": npz_seed(compressed=True),
        "idx3": img,
        "idx1": lab,
    }


def test_seeds_are_valid(work, seeds):
    """The fuzzers start from files every loader accepts."""
    for name, data in [("s.csv", seeds["csv"]), ("s.csv.gz", gz(seeds["csv"])), ("s.npz", seeds["npz"]),
                       ("z.npz", seeds["npz.z"])]:
        (work / name).write_bytes(data)
        X, y = load_table(work / name, DIGITS)
        assert X.shape == (12, 64) and y.shape == (12,)
    (work / "t-images-idx3-ubyte").write_bytes(seeds["idx3"])
    (work / "t-labels-idx1-ubyte").write_bytes(seeds["idx1"])
    assert load_table(work / "t-images-idx3-ubyte", DIGITS)[0].shape == (12, 64)
    for cls, data in [(CoordinatorConfig, coordinator_yaml(work)), (OwnerConfig, owner_yaml(work)),
                      (DatasetSchema, schema_yaml())]:
        (work / "c.yaml").write_bytes(dump_yaml(data))
        load_config(cls, work / "c.yaml")


# ---- data files ------------------------------------------------------------------------------

@fuzz_settings(250)
@given(data=st.data())
def test_csv(work, seeds, data):
    raw = data.draw(bytes_or_mutation(seeds["csv"]))
    as_gzip = data.draw(st.booleans())
    path = work / ("f.csv.gz" if as_gzip else "f.csv")
    path.write_bytes(gz(raw) if as_gzip and data.draw(st.booleans()) else raw)
    out = clean(load_table, path, DIGITS)
    if not isinstance(out, FedfheError):
        X, y = out
        assert X.shape[1] == 64 and len(X) == len(y) and np.isfinite(X).all()


@fuzz_settings(200)
@given(data=st.data())
def test_npz_bytes(work, seeds, data):
    raw = data.draw(bytes_or_mutation(seeds[data.draw(st.sampled_from(["npz", "npz.z"]))], tokens=False))
    path = work / "f.npz"
    path.write_bytes(raw)
    out = clean(load_table, path, DIGITS)
    if not isinstance(out, FedfheError):
        assert out[0].shape[1] == 64


DTYPES = ["f8", "f4", "f2", "i8", "i1", "u1", "u8", "b1", "c16", "U3", "S2", "M8[s]", "m8[s]", "V4", "O"]


@st.composite
def any_array(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 70), min_size=0, max_size=3)))
    size = int(np.prod(shape)) if shape else 1
    if dtype.kind == "O":
        return np.array([{"a": 1}] * size, dtype=object).reshape(shape)
    values = draw(st.lists(st.integers(-2, 20), min_size=size, max_size=size)) if size <= 800 else [1] * size
    if dtype.kind in "US":
        return np.array([str(v) for v in values], dtype=dtype).reshape(shape)
    if dtype.kind == "V":
        return np.zeros(shape, dtype=dtype)
    return np.array(values).astype(dtype).reshape(shape)


@fuzz_settings(120)
@given(arrays=st.dictionaries(st.sampled_from(["X", "y", "Z", "x"]), any_array(), max_size=3),
       compressed=st.booleans())
def test_npz_arrays(work, arrays, compressed):
    """Well-formed NPZ files holding the wrong things: dtypes, shapes, objects (pickle), missing arrays."""
    path = work / "a.npz"
    with open(path, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    out = clean(load_table, path, DIGITS)
    if not isinstance(out, FedfheError):
        X, y = out
        assert X.dtype == np.float64 and X.shape[1] == 64 and y.dtype == np.int64


@fuzz_settings(250)
@given(data=st.data())
def test_idx(work, seeds, data):
    which = data.draw(st.sampled_from(["images", "labels", "both"]))
    img = data.draw(bytes_or_mutation(seeds["idx3"], tokens=False)) if which != "labels" else seeds["idx3"]
    lab = data.draw(bytes_or_mutation(seeds["idx1"], tokens=False)) if which != "images" else seeds["idx1"]
    suffix = ".gz" if data.draw(st.booleans()) else ""
    images = work / f"f-images-idx3-ubyte{suffix}"
    labels = work / f"f-labels-idx1-ubyte{suffix}"
    images.write_bytes(gz(img) if suffix else img)
    labels.write_bytes(gz(lab) if suffix else lab)
    clean(read_idx, images)
    out = clean(load_table, images, DIGITS)
    if not isinstance(out, FedfheError):
        assert out[0].shape[1] == 64


@fuzz_settings(100)
@given(ndim=st.integers(0, 255), code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
       dims=st.lists(st.sampled_from([0, 1, 2, 3, 2**16, 2**31, 2**32 - 1]), max_size=255),
       body=st.binary(max_size=64))
def test_idx_headers(work, ndim, code, dims, body):
    """Headers that lie: huge or zero dimensions, too many dimensions, products that overflow int64."""
    dims = (dims + [1] * ndim)[:ndim]
    raw = bytes([0, 0, code, ndim]) + np.array(dims, dtype=">u4").tobytes() + body
    path = work / "h-images-idx3-ubyte"
    path.write_bytes(raw)
    clean(read_idx, path)


# ---- YAML configs ---------------------------------------------------------------------------

CONFIGS = {"coordinator": (CoordinatorConfig, coordinator_yaml), "owner": (OwnerConfig, owner_yaml),
           "schema": (DatasetSchema, lambda _: schema_yaml())}


@fuzz_settings(300)
@given(data=st.data(), role=st.sampled_from(sorted(CONFIGS)))
def test_yaml_config_bytes(work, data, role):
    cls, seed = CONFIGS[role]
    path = work / f"{role}.yaml"
    path.write_bytes(data.draw(bytes_or_mutation(dump_yaml(seed(work)))))
    clean(load_config, cls, path)


@fuzz_settings(200)
@given(data=st.data(), role=st.sampled_from(sorted(CONFIGS)))
def test_yaml_config_values(work, data, role):
    """Valid YAML, wrong contents: any value of any type at any key, keys missing or unknown."""
    cls, seed = CONFIGS[role]
    path = work / f"{role}-v.yaml"
    path.write_bytes(dump_yaml(data.draw(perturbed_mapping(seed(work)))))
    clean(load_config, cls, path)


# ---- manifest and training artifact ------------------------------------------------------------

@pytest.fixture(scope="module")
def artifact_dir(work):
    X, y = digits_rows(60)
    model = models.build("LogisticRegression", {"max_iter": 50})
    models.local_fit(model, "LogisticRegression", X, y, DIGITS)
    coef, icpt = models.get_parameters(model, "LogisticRegression", DIGITS)
    path = work / "artifact"
    TrainingArtifact("LogisticRegression", DIGITS, coef, icpt, {"max_iter": 50}, {"rounds": 1}).save(path)
    TrainingArtifact.load(path)
    return path


@pytest.fixture
def scratch(work, artifact_dir):
    """A fresh copy of the artifact per test (examples within a test rewrite it in place)."""
    dest = work / "scratch"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(artifact_dir, dest)
    return dest


@fuzz_settings(200)
@given(data=st.data())
def test_manifest_bytes(scratch, artifact_dir, data):
    seed = (artifact_dir / MANIFEST).read_bytes()
    (scratch / MANIFEST).write_bytes(data.draw(bytes_or_mutation(seed)))
    clean(verify_manifest, scratch, "fedfhe-training-artifact")
    clean(TrainingArtifact.load, scratch)


NASTY_NAMES = ["../metrics.json", "/etc/passwd", "a/b", "..", ".", "", ".hidden", "x\x00y", "..\\x", "n" * 300,
               "sub", "link", "model.json", "params.npz", "metrics.json", "manifest.json", "missing.bin", "~", "\n"]


@fuzz_settings(150)
@given(files=st.dictionaries(st.one_of(st.sampled_from(NASTY_NAMES), st.text(max_size=12)),
                             st.one_of(st.text(max_size=70), st.integers(), st.none()), max_size=5),
       extra=st.dictionaries(st.sampled_from(["family", "format_version", "kind", "x"]),
                             st.one_of(st.integers(0, 3), st.text(max_size=30), st.booleans()), max_size=3))
def test_manifest_structure(scratch, files, extra):
    """Canonical manifests (so the form check passes) naming hostile members: traversal, dirs, symlinks."""
    (scratch / "sub").mkdir(exist_ok=True)
    if not (scratch / "link").is_symlink():
        (scratch / "link").symlink_to("/etc/hostname")
    body = {"kind": "fedfhe-training-artifact", "format_version": 1, "files": files, **extra}
    (scratch / MANIFEST).write_bytes(canonical_json(body))
    out = clean(verify_manifest, scratch, "fedfhe-training-artifact")
    if not isinstance(out, FedfheError):
        assert all(name and "/" not in name and name not in ("sub", "link") for name in files)
    clean(TrainingArtifact.load, scratch)


MEMBERS = ["params.npz", "model.json", "metrics.json"]


@fuzz_settings(200)
@given(data=st.data(), member=st.sampled_from(MEMBERS))
def test_artifact_members_resealed(scratch, artifact_dir, data, member):
    """A member mutated and the manifest re-sealed to match (a consistent but hostile artifact): the
    parsers behind the manifest must still end in a result or a clean IntegrityError."""
    raw = data.draw(bytes_or_mutation((artifact_dir / member).read_bytes(), tokens=member != "params.npz"))
    (scratch / member).write_bytes(raw)
    body = json.loads((artifact_dir / MANIFEST).read_text())
    body["files"] = {m: sha256_file(scratch / m) for m in MEMBERS}
    (scratch / MANIFEST).write_bytes(canonical_json(body))
    out = clean(TrainingArtifact.load, scratch)
    if not isinstance(out, FedfheError):
        assert np.isfinite(out.coef).all() and out.coef.shape == (10, 64)


@fuzz_settings(60)
@given(model=st.fixed_dictionaries({}, optional={
    "family": st.one_of(st.sampled_from(["LogisticRegression", "Ridge", "Nope"]), st.integers(), st.none()),
    "schema": st.one_of(st.just(DIGITS.to_dict()), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
                        st.lists(st.integers(), max_size=2), st.none()),
    "params": st.one_of(st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), st.text(max_size=5)),
    "origin": st.one_of(st.text(max_size=5), st.integers()),
}), coef=st.sampled_from(["ok", "nan", "str", "shape", "complex", "object"]))
def test_artifact_contents_resealed(scratch, model, coef):
    """Parsable but wrong model.json and params.npz, re-sealed: refused or a usable artifact."""
    (scratch / "model.json").write_text(json.dumps(model))
    arrays = {"ok": np.zeros((10, 64)), "nan": np.full((10, 64), np.nan), "str": np.full((10, 64), "a"),
              "shape": np.zeros((3, 3)), "complex": np.zeros((10, 64), dtype=complex),
              "object": np.array([None] * 640, dtype=object).reshape(10, 64)}
    with open(scratch / "params.npz", "wb") as fh:
        np.savez(fh, coef=arrays[coef], intercept=np.zeros(10), classes=np.arange(10))
    files = {m: sha256_file(scratch / m) for m in MEMBERS}
    family = model.get("family")
    body = {"kind": "fedfhe-training-artifact", "format_version": 1, "files": files, "family": family}
    (scratch / MANIFEST).write_bytes(canonical_json(body))
    out = clean(TrainingArtifact.load, scratch)
    if not isinstance(out, FedfheError):
        assert coef == "ok" and family == "LogisticRegression"
        assert out.to_estimator().predict(np.zeros((1, 64))).shape == (1,)  # usable as loaded
