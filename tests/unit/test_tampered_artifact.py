"""A training artifact with any byte changed, in any of its files, is refused before anything is parsed;
manifest member names never reach outside the artifact's directory.

(The manifest is integrity, not authenticity: whoever can rewrite every file,
manifest included, can forge an artifact. Transport and file permissions
protect against that.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from fuzzing import canonical_json, digits_rows, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from fedfhe_common.contracts import artifact as artifact_module
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.manifest import MANIFEST, sha256_file, verify_manifest
from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import IntegrityError

pytestmark = pytest.mark.timeout(60)
FILES = ["params.npz", "model.json", "metrics.json", MANIFEST]
KIND = "fedfhe-training-artifact"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    X, y = digits_rows(60)
    model = models.build("LogisticRegression", {"max_iter": 50})
    models.local_fit(model, "LogisticRegression", X, y, DIGITS)
    coef, icpt = models.get_parameters(model, "LogisticRegression", DIGITS)
    path = tmp_path_factory.mktemp("tamper") / "artifact"
    TrainingArtifact("LogisticRegression", DIGITS, coef, icpt, {"max_iter": 50}, {"rounds": 1}).save(path)
    TrainingArtifact.load(path)
    return path, {name: (path / name).read_bytes() for name in FILES}


class NotYet:
    """Stands in for json / numpy inside fedfhe_common.contracts.artifact: parsing before verification fails loudly."""

    def __init__(self, real: object) -> None:
        self._real = real

    def __getattr__(self, name: str) -> object:
        if name in ("load", "loads"):
            raise AssertionError(f"artifact parsed ({name}) before its manifest verified")
        return getattr(self._real, name)


def load_refused(directory: Path) -> IntegrityError:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifact_module, "np", NotYet(artifact_module.np))
        mp.setattr(artifact_module, "json", NotYet(artifact_module.json))
        with pytest.raises(IntegrityError) as err:
            TrainingArtifact.load(directory)
    return err.value


@fuzz_settings(300)
@given(data=st.data(), member=st.sampled_from(FILES))
def test_any_changed_byte_is_refused_before_use(pristine, data, member):
    path, originals = pristine
    orig = originals[member]
    at = data.draw(st.integers(0, len(orig) - 1), label="offset")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != orig[at]), label="byte")
    try:
        (path / member).write_bytes(orig[:at] + bytes([new]) + orig[at + 1:])
        load_refused(path)
    finally:
        (path / member).write_bytes(orig)


# The deterministic sweep: per file, a stride over positions and what replaces the byte there (an xor mask,
# or a byte that keeps JSON well-formed: whitespace, a digit, a letter, a quote).
FLIP, SET = "xor", "set"
SWEEP = {
    "params.npz": (3, [(FLIP, 0x01)]),  # 6 kB: every third byte keeps the sweep to a few seconds
    "model.json": (1, [(FLIP, 0x01), (FLIP, 0x20)]),
    "metrics.json": (1, [(FLIP, 0x01), (FLIP, 0x20)]),
    MANIFEST: (1, [(FLIP, 0x01), (FLIP, 0x02), (FLIP, 0x20)] + [(SET, ord(c)) for c in " \t\n\r0a\""]),
}


def test_every_position_of_every_file_is_checked(pristine):
    """Deterministic complement to the random test: every byte position of every file (every third in
    params.npz), a few replacements each, including whitespace and digits in manifest.json."""
    path, originals = pristine
    tried = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifact_module, "np", NotYet(artifact_module.np))
        mp.setattr(artifact_module, "json", NotYet(artifact_module.json))
        for member, orig in originals.items():
            stride, edits = SWEEP[member]
            try:
                for at in range(0, len(orig), stride):
                    for op, value in edits:
                        new = orig[at] ^ value if op == FLIP else value
                        if new == orig[at]:
                            continue
                        (path / member).write_bytes(orig[:at] + bytes([new]) + orig[at + 1:])
                        with pytest.raises(IntegrityError):
                            TrainingArtifact.load(path)
                        tried += 1
            finally:
                (path / member).write_bytes(orig)
    assert tried > len(originals[MANIFEST]) * 9


@fuzz_settings(100)
@given(data=st.data(), member=st.sampled_from(FILES),
       how=st.sampled_from(["truncate", "append", "insert", "delete", "empty", "remove", "directory", "symlink"]))
def test_any_other_edit_is_refused(pristine, data, member, how):
    path, originals = pristine
    orig, target = originals[member], path / member
    at = data.draw(st.integers(0, len(orig) - 1), label="offset")
    try:
        if how == "truncate":
            target.write_bytes(orig[:at])
        elif how == "append":
            target.write_bytes(orig + data.draw(st.binary(min_size=1, max_size=8)))
        elif how == "insert":
            target.write_bytes(orig[:at] + data.draw(st.binary(min_size=1, max_size=8)) + orig[at:])
        elif how == "delete":
            target.write_bytes(orig[:at] + orig[at + 1:])
        elif how == "empty":
            target.write_bytes(b"")
        elif how == "remove":
            target.unlink()
        elif how == "directory":
            target.unlink()
            target.mkdir()
        elif how == "symlink":  # same bytes, but through a link: refused all the same
            copy = path.parent / f"copy-of-{member}"
            copy.write_bytes(orig)
            target.unlink()
            target.symlink_to(copy)
        load_refused(path)
    finally:
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        elif target.exists() or target.is_symlink():
            target.unlink()
        target.write_bytes(orig)
    TrainingArtifact.load(path)  # restored


# ---- path traversal in manifest member names --------------------------------------------------

TRAVERSALS = ["../outside.bin", "../../outside.bin", "{outside}", "sub/../../outside.bin", "./../outside.bin",
              "..\\outside.bin", "sub/x.bin", "..", ".", "", ".outside.bin", "x.bin\x00.txt"]


@pytest.fixture
def box(tmp_path) -> tuple[Path, Path, str]:
    """An artifact-like directory and, next to it, a file its manifest tries to reach."""
    directory = tmp_path / "box" / "artifact"
    (directory / "sub").mkdir(parents=True)
    outside = tmp_path / "box" / "outside.bin"
    outside.write_bytes(b"secret next door")
    (directory / "sub" / "x.bin").write_bytes(b"nested")
    (directory / "a").write_bytes(b"a plain member")
    return directory, outside, hashlib.sha256(outside.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_names_are_refused_even_with_the_right_digest(box, name):
    directory, outside, digest = box
    name = name.format(outside=outside)
    files = {name: digest, "sub/x.bin": sha256_file(directory / "sub" / "x.bin")} if name else {"": digest}
    (directory / MANIFEST).write_bytes(canonical_json({"kind": KIND, "format_version": 1, "files": files}))
    with pytest.raises(IntegrityError, match="unsafe file"):
        verify_manifest(directory, KIND)


def test_symlinked_member_is_refused_even_with_the_right_digest(box):
    directory, outside, digest = box
    (directory / "data.bin").symlink_to(outside)
    body = {"kind": KIND, "format_version": 1, "files": {"data.bin": digest}}
    (directory / MANIFEST).write_bytes(canonical_json(body))
    with pytest.raises(IntegrityError, match="symbolic link"):
        verify_manifest(directory, KIND)


segments = st.sampled_from(["..", ".", "a", "outside.bin", "", "sub", "x.bin", "\\", "~"])


@fuzz_settings(200)
@given(parts=st.lists(segments, min_size=1, max_size=5), absolute=st.booleans())
def test_only_plain_names_inside_the_directory_pass(box, parts, absolute):
    """Whatever path a name spells, a manifest that verifies only ever names plain files in its directory."""
    directory, outside, _ = box
    name = ("/" if absolute else "") + "/".join(parts)
    candidate = Path(os.path.normpath(directory / name)) if name else directory
    digest = sha256_file(candidate) if candidate.is_file() else "0" * 64
    (directory / MANIFEST).write_bytes(canonical_json({"kind": KIND, "format_version": 1, "files": {name: digest}}))
    try:
        verify_manifest(directory, KIND)
    except IntegrityError:
        return
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert (directory / name).resolve().parent == directory.resolve()


def test_restored_artifact_still_loads(pristine, tmp_path):
    """The fixtures above put every byte back: a copy of the artifact loads and predicts."""
    path, _ = pristine
    shutil.copytree(path, tmp_path / "copy")
    model = TrainingArtifact.load(tmp_path / "copy").to_estimator()
    X, _ = digits_rows(5)
    assert model.predict(X).shape == (5,)
