"""train signs only a checked copy of the ServerApp's artifact, read without following links (issue 24).

The ServerApp runs as the service user and leaves its unsigned artifact in a directory that user
writes; `fedfhe-coordinator train` runs as the release user, who holds the signing key. Each test
plants what a hostile service user could (a link to a file only the release user may read, a hard
link, a FIFO, an extra or swapped member) and checks nothing is signed and the previous signed
artifact stays.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import IntegrityError
from fedfhe_coordinator.train.training import _stamp, read_progress

KEY = Ed25519PrivateKey.generate()


def unsigned(directory, scale: float = 0.0) -> TrainingArtifact:
    coef, icpt = (np.full(s, scale) for s in models.param_shapes("LogisticRegression", DIGITS))
    art = TrainingArtifact("LogisticRegression", DIGITS, coef, icpt, {}, {"rounds": 1})
    art.save(directory)  # as the ServerApp does: no key
    return art


@pytest.fixture
def dirs(tmp_path):
    produced, signed = tmp_path / "service" / "artifact", tmp_path / "release" / "training" / "artifact"
    unsigned(produced, 0.5)
    secret = tmp_path / "release.key.like"
    secret.write_bytes(b"only the release user may read this")
    return produced, signed, secret


def test_the_copy_is_signed_and_a_later_swap_in_the_source_never_reaches_it(dirs):
    produced, signed, _ = dirs
    art = TrainingArtifact.adopt(produced, signed, KEY)
    assert float(art.coef.ravel()[0]) == 0.5
    unsigned(produced, 9.0)  # the service user rewrites its artifact after the signature
    again = TrainingArtifact.load(signed, KEY.public_key())
    assert float(again.coef.ravel()[0]) == 0.5
    assert not (produced / "manifest.sig").exists()  # nothing signed in the service's directory


def test_in_place_when_one_user_runs_everything(dirs):
    produced, _, _ = dirs
    TrainingArtifact.adopt(produced, produced, KEY)
    assert float(TrainingArtifact.load(produced, KEY.public_key()).coef.ravel()[0]) == 0.5


def plant_symlink(produced, secret):
    (produced / "metrics.json").unlink()
    (produced / "metrics.json").symlink_to(secret)


def plant_hardlink(produced, secret):
    (produced / "metrics.json").unlink()
    os.link(secret, produced / "metrics.json")


def plant_fifo(produced, secret):
    (produced / "params.npz").unlink()
    os.mkfifo(produced / "params.npz")


def plant_directory_link(produced, secret):
    real = produced.with_name("elsewhere")
    produced.rename(real)
    produced.symlink_to(real, target_is_directory=True)


def plant_extra(produced, secret):
    (produced / "payload.so").write_bytes(b"\x7fELF")


def plant_swap(produced, secret):
    metrics = produced / "metrics.json"
    assert '"rounds": 1' in metrics.read_text()
    metrics.write_text(metrics.read_text().replace('"rounds": 1', '"rounds": 7'))  # after the manifest was written


@pytest.mark.parametrize("plant, refusal", [
    (plant_symlink, "metrics.json: refused: a symbolic link"),
    (plant_hardlink, "metrics.json: refused: 2 hard links"),
    (plant_fifo, "params.npz: refused: not a plain file"),
    (plant_directory_link, "artifact: refused: a symbolic link"),
    (plant_extra, r"unexpected files \['payload.so'\]"),
    (plant_swap, "SHA-256 does not match"),
], ids=["symlink", "hardlink", "fifo", "directory-link", "extra-member", "member-swapped"])
def test_what_a_hostile_service_user_plants_is_refused_and_nothing_is_signed(dirs, plant, refusal):
    produced, signed, secret = dirs
    unsigned(produced.parent / "first", 0.25)
    TrainingArtifact.adopt(produced.parent / "first", signed, KEY)  # the last good signed artifact
    plant(produced, secret)
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            TrainingArtifact.adopt(produced, signed, KEY)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            done.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(30)  # a FIFO must not block the release user: a refusal, not a hang
    assert not worker.is_alive(), "adopt blocked"
    assert done and isinstance(done[0], IntegrityError), done
    assert re.search(refusal, str(done[0])), str(done[0])
    kept = TrainingArtifact.load(signed, KEY.public_key())
    assert float(kept.coef.ravel()[0]) == 0.25
    assert secret.read_bytes() == b"only the release user may read this"


def test_progress_rows_of_an_older_run_are_not_reported(tmp_path):
    progress = tmp_path / "progress.jsonl"
    progress.write_text('{"round": 1}\n')
    stale = _stamp(progress)
    assert read_progress(progress, stale) == []
    progress.write_text('{"round": 1, "new": true}\n')  # the ServerApp rewrites it at its start
    assert read_progress(progress, stale) == [{"round": 1, "new": True}]


def test_progress_through_a_link_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text('{"round": 1}\n')
    (tmp_path / "progress.jsonl").symlink_to(secret)
    assert read_progress(tmp_path / "progress.jsonl") == []  # train goes on (and says so once); rows not shown
