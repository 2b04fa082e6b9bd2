"""The training artifact: the hand-off from training to compilation, without pickle.

A directory holding ``params.npz`` (coef, intercept, classes; loaded with
allow_pickle=False) for a linear family, or for a tree family the tree part of
the contract (``fedfhe_common.contracts.tree_artifact``: ``trees.npz`` node arrays or
``xgboost.json``, checked before any estimator is built), ``model.json`` (family, hyper-parameters, schema),
``metrics.json`` (per-round history), a SHA-256 ``manifest.json`` and its
release signature ``manifest.sig`` (``train`` and ``train-local`` sign; ``compile``
accepts only a signed artifact).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedfhe_common.contracts import tree_artifact
from fedfhe_common.contracts.manifest import MANIFEST, verify_manifest, write_manifest
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.pki import release
from fedfhe_common.runtime.errors import IntegrityError
from fedfhe_common.runtime.fileio import open_dir, read_plain, write_dir_atomic

KIND = "fedfhe-training-artifact"
FILES = ("params.npz", "model.json", "metrics.json")
MAX_MEMBER_BYTES = tree_artifact.MAX_XGB_JSON_BYTES + (1 << 20)  # the largest member: a forest's xgboost.json


def files_for(family: str) -> tuple[str, ...]:
    """The members an artifact of ``family`` holds (a tree family swaps params.npz for its tree member)."""
    if models.is_tree(family):
        return (tree_artifact.member(family), *FILES[1:])
    return FILES


@dataclass
class TrainingArtifact:
    family: str
    schema: DatasetSchema
    coef: np.ndarray
    intercept: np.ndarray
    model_params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    origin: str = "federated"
    manifest_sha256: str = ""  # of the manifest this was loaded from (the bundle's provenance names it)
    tree: tree_artifact.TreeModel | None = None  # a tree family's model (coef and intercept are then empty)
    preprocessing: Preprocessing | None = None  # how rows become model inputs (None: the identity)

    @property
    def prep(self) -> Preprocessing:
        return self.preprocessing or Preprocessing.from_dict(self.schema, None)

    def to_estimator(self) -> Any:
        """A scikit-learn (or XGBoost) estimator ready to predict (and to hand to Concrete ML)."""
        if self.tree is not None:
            return tree_artifact.to_estimator(self.tree, self.family, self.model_params, self.schema)
        model = models.build(self.family, self.model_params)
        return models.set_parameters(model, [self.coef, self.intercept], self.schema)

    def save(self, directory: Path, signing_key: Ed25519PrivateKey | None = None, mode: int | None = None) -> Path:
        """Write atomically: a reader sees the old artifact or the new one, never half.

        Without ``signing_key`` (the ServerApp, which holds no key) the artifact is
        unsigned until ``sign`` runs; ``compile`` refuses it until then. ``mode``: the
        directory's (else 0700, mkdtemp's), e.g. 0750 for a release user in the group to read.
        """

        if models.is_tree(self.family) != (self.tree is not None):
            raise ValueError(f"{self.family}: a tree family carries its tree part, a linear one none")

        def produce(tmp: Path) -> None:
            if self.tree is not None:
                tree_artifact.write(self.tree, tmp)
            else:
                classes = np.asarray(self.schema.label_codes, dtype=np.int64)
                np.savez(tmp / "params.npz", coef=self.coef, intercept=self.intercept, classes=classes)
            model = {"family": self.family, "params": self.model_params, "origin": self.origin,
                     "schema": self.schema.to_dict()}
            if self.schema.typed:  # legacy schemas keep their artifacts as they were: the identity
                model["preprocessing"] = self.prep.to_dict()
            (tmp / "model.json").write_text(json.dumps(model, indent=2, sort_keys=True))
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
            write_manifest(tmp, KIND, list(files_for(self.family)), {"family": self.family})
            if signing_key is not None:
                release.sign_manifest(tmp, signing_key)

        return write_dir_atomic(Path(directory), produce, mode)

    @staticmethod
    def sign(directory: Path, signing_key: Ed25519PrivateKey) -> None:
        """Sign an artifact in place once its manifest verifies (after a federated run)."""
        verify_manifest(Path(directory), KIND)
        release.sign_manifest(Path(directory), signing_key)

    @classmethod
    def adopt(cls, source: Path, dest: Path, signing_key: Ed25519PrivateKey) -> TrainingArtifact:
        """Copy the ServerApp's unsigned artifact out of a directory another user writes, check the copy, sign it.

        The release user signs only bytes it read once into a directory it alone writes: the service
        user cannot swap a member between the check and the signature (a signing oracle), nor steer
        the read through a link to a file only the release user may read. Links, hard links, FIFOs,
        extra or missing members are refused. ``source`` may equal ``dest`` (one user runs both).
        """
        source = Path(source)
        try:
            dfd = open_dir(source)
        except FileNotFoundError:
            raise IntegrityError(f"{source}: no artifact (the ServerApp wrote none)") from None
        try:
            try:
                raw = read_plain(MANIFEST, MAX_MEMBER_BYTES, dfd, source / MANIFEST)
                named = json.loads(raw).get("family")
            except FileNotFoundError:
                raise IntegrityError(f"{source / MANIFEST}: missing manifest") from None
            except (ValueError, AttributeError):
                raise IntegrityError(f"{source / MANIFEST}: not a JSON object naming the family") from None
            names = files_for(named) if isinstance(named, str) and named in models.LOCAL_FAMILIES else FILES
            data = {MANIFEST: raw}
            for name in names:
                try:
                    data[name] = read_plain(name, MAX_MEMBER_BYTES, dfd, source / name)
                except FileNotFoundError:
                    raise IntegrityError(f"{source}: missing {name}") from None
            extra = sorted(set(os.listdir(dfd)) - set(data) - {release.SIGNATURE})
        finally:
            os.close(dfd)
        if extra:
            raise IntegrityError(f"{source}: unexpected files {extra[:5]} (an artifact holds {', '.join(data)})")

        def produce(tmp: Path) -> None:
            for name, content in data.items():
                (tmp / name).write_bytes(content)
            TrainingArtifact.sign(tmp, signing_key)
            cls.load(tmp, signing_key.public_key())  # every content check, on the copy, before it takes dest's place

        write_dir_atomic(Path(dest), produce)
        return cls.load(Path(dest), signing_key.public_key())

    @classmethod
    def load(cls, directory: Path, verify_key: Ed25519PublicKey | None = None) -> TrainingArtifact:
        """Verify the signature (with ``verify_key``) and the manifest, then read; any mismatch is an IntegrityError."""
        directory = Path(directory)
        try:
            raw = (directory / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{directory / MANIFEST}: missing manifest") from None
        except OSError as exc:
            raise IntegrityError(f"{directory / MANIFEST}: cannot read: {exc.strerror or exc}") from None
        if verify_key is not None:
            release.verify(verify_key, raw, release.read_signature(directory), f"training artifact {directory}")
        manifest = verify_manifest(directory, KIND, raw)
        named = manifest.get("family")
        files = files_for(named) if isinstance(named, str) else FILES
        if sorted(manifest["files"]) != sorted(files):
            raise IntegrityError(f"{directory}: the manifest must list exactly {', '.join(files)}")
        tree = None
        try:
            model = json.loads((directory / "model.json").read_text(encoding="utf-8"))
            metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
            if not isinstance(model, dict) or not isinstance(metrics, dict):
                raise TypeError("model.json and metrics.json must hold JSON objects")
            schema = DatasetSchema.from_mapping(model["schema"], "model.json: schema")
            family = model["family"]
            if not isinstance(family, str) or family != manifest.get("family"):
                raise ValueError(f"model family {family!r} differs from the manifest's {manifest.get('family')!r}")
            models.check_family(family, schema, local=True)
            prep = Preprocessing.from_dict(schema, model.get("preprocessing"), f"{directory}/model.json: preprocessing")
            params, origin = model.get("params", {}), model.get("origin", "")
            if not isinstance(params, dict) or not isinstance(origin, str):
                raise TypeError("model.json: params must be an object and origin a string")
            models.build(family, params)  # unknown hyper-parameters fail here, not at compile time
            if models.is_tree(family):
                tree = tree_artifact.read(directory, family, schema)  # checked before any estimator is built
                coef = intercept = np.zeros(0)
            else:
                with np.load(directory / "params.npz", allow_pickle=False) as npz:
                    coef, intercept = npz["coef"], npz["intercept"]
        except IntegrityError:
            raise
        except Exception as exc:  # noqa: BLE001 - JSON, zip, npy, schema: any parse failure is a bad artifact
            raise IntegrityError(f"{directory}: malformed training artifact: {str(exc)[:300]}") from None
        if tree is not None:
            return cls(family, schema, coef, intercept, params, metrics, origin, hashlib.sha256(raw).hexdigest(),
                       tree, prep)
        expected = models.param_shapes(family, schema)
        if coef.shape != expected[0] or intercept.shape != expected[1]:
            raise IntegrityError(f"{directory}: parameter shapes {coef.shape}/{intercept.shape} do not fit the schema")
        if coef.dtype.kind not in "iuf" or intercept.dtype.kind not in "iuf":
            raise IntegrityError(f"{directory}: parameters must be real numbers, got {coef.dtype}/{intercept.dtype}")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise IntegrityError(f"{directory}: parameters hold NaN or infinite values")
        return cls(family, schema, coef, intercept, params, metrics, origin, hashlib.sha256(raw).hexdigest(),
                   preprocessing=prep)
