"""The tree part of the training artifact: node arrays or XGBoost JSON round-trip without pickle, and a
hostile tree (a child index out of range, a feature id past the schema, a cycle, a swapped member) is refused
before any estimator is built, with the reason named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedfhe_common.contracts import tree_artifact
from fedfhe_common.contracts.artifact import TrainingArtifact, files_for
from fedfhe_common.contracts.manifest import write_manifest
from fedfhe_common.contracts.schema import DIABETES, DIGITS
from fedfhe_common.runtime.errors import ConfigError, IntegrityError
from fedfhe_coordinator.fhe.local_training import train_local
from fedfhe_testbed.datasets import load_builtin

SMALL = {"DecisionTreeClassifier": {"max_depth": 4}, "RandomForestClassifier": {"n_estimators": 3, "max_depth": 3},
         "XGBClassifier": {"n_estimators": 2, "max_depth": 2}, "DecisionTreeRegressor": {"max_depth": 4},
         "RandomForestRegressor": {"n_estimators": 3, "max_depth": 3}, "XGBRegressor": {"n_estimators": 3}}


def saved(tmp_path: Path, family: str) -> tuple[Path, TrainingArtifact, np.ndarray]:
    X, y, schema = load_builtin("digits" if family.endswith("Classifier") else "diabetes")
    artifact = train_local(X, y, schema, family, model_params=SMALL[family])
    artifact.save(tmp_path / family)
    return tmp_path / family, artifact, X


def rewrite(directory: Path, family: str) -> None:
    """Re-seal the manifest after an edit: what a hostile signer (or anyone before signing) could hand over."""
    write_manifest(directory, "fedfhe-training-artifact", list(files_for(family)), {"family": family})


def edit_npz(directory: Path, family: str, **changes: object) -> None:
    path = directory / "trees.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    for key, edit in changes.items():
        edit(arrays[key])  # type: ignore[operator]
    np.savez(path, **arrays)
    rewrite(directory, family)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_roundtrip_predicts_the_same(tmp_path, family):
    path, artifact, X = saved(tmp_path, family)
    assert sorted(p.name for p in path.iterdir()) == sorted([*files_for(family), "manifest.json"])
    assert not list(path.glob("*.pkl")) and not list(path.glob("params.npz"))
    loaded = TrainingArtifact.load(path)
    original, rebuilt = artifact.to_estimator(), loaded.to_estimator()
    np.testing.assert_array_equal(rebuilt.predict(X), original.predict(X))
    if family.endswith("Classifier"):
        np.testing.assert_allclose(rebuilt.predict_proba(X), original.predict_proba(X))
    assert loaded.origin == "local" and loaded.metrics["tree"] == artifact.metrics["tree"]


def test_child_index_out_of_range_is_refused(tmp_path):
    path, _, _ = saved(tmp_path, "DecisionTreeClassifier")

    def far(a: np.ndarray) -> None:
        a[0] = 10_000

    edit_npz(path, "DecisionTreeClassifier", left_child=far)
    with pytest.raises(IntegrityError, match=r"trees.npz: refused: tree 0: node 0's left child index 10000 is out of"):
        TrainingArtifact.load(path)


def test_feature_id_past_the_schema_is_refused(tmp_path):
    path, _, _ = saved(tmp_path, "RandomForestRegressor")

    def past(a: np.ndarray) -> None:
        a[0] = DIABETES.n_features  # one past the last feature

    edit_npz(path, "RandomForestRegressor", feature=past)
    with pytest.raises(IntegrityError, match=r"tree 0: node 0 splits on feature id 10, not below n_features 10"):
        TrainingArtifact.load(path)


def test_cycle_is_refused(tmp_path):
    path, _, _ = saved(tmp_path, "DecisionTreeClassifier")
    with np.load(path / "trees.npz", allow_pickle=False) as npz:
        left = npz["left_child"]
    inner = int(left[0])  # an internal child of the root: point its left child back up at it

    def loop(a: np.ndarray) -> None:
        a[inner] = inner

    edit_npz(path, "DecisionTreeClassifier", left_child=loop)
    with pytest.raises(IntegrityError, match=rf"node {inner} is reached twice from the root \(a cycle"):
        TrainingArtifact.load(path)


def test_a_swapped_member_is_refused(tmp_path):
    """Another model's trees.npz in place of this one's: the manifest's hash refuses it before it is parsed."""
    path, _, _ = saved(tmp_path, "DecisionTreeClassifier")
    other, _, _ = saved(tmp_path / "other", "RandomForestClassifier")
    (path / "trees.npz").write_bytes((other / "trees.npz").read_bytes())
    with pytest.raises(IntegrityError, match=r"trees.npz: SHA-256 does not match the manifest"):
        TrainingArtifact.load(path)
    rewrite(path, "DecisionTreeClassifier")  # even re-sealed, a forest is not one decision tree
    with pytest.raises(IntegrityError, match=r"DecisionTreeClassifier holds one tree, not 3"):
        TrainingArtifact.load(path)


def test_an_extra_npz_member_or_pickled_array_is_refused(tmp_path):
    path, _, _ = saved(tmp_path, "DecisionTreeRegressor")
    with np.load(path / "trees.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(path / "trees.npz", **arrays, payload=np.array([object()], dtype=object))
    rewrite(path, "DecisionTreeRegressor")
    with pytest.raises(IntegrityError, match=r"members .* are not exactly"):
        TrainingArtifact.load(path)
    arrays["value"] = np.array([None] * len(arrays["value"]), dtype=object)
    np.savez(path / "trees.npz", **arrays)
    rewrite(path, "DecisionTreeRegressor")
    with pytest.raises(IntegrityError, match=r"trees.npz: malformed: .*pickle"):
        TrainingArtifact.load(path)


def edit_xgb(directory: Path, edit) -> None:  # noqa: ANN001 - a callable on the parsed JSON
    doc = json.loads((directory / "xgboost.json").read_bytes())
    edit(doc)
    (directory / "xgboost.json").write_text(json.dumps(doc))
    rewrite(directory, "XGBRegressor")


def test_hostile_xgboost_json_is_refused(tmp_path):
    path, _, _ = saved(tmp_path, "XGBRegressor")
    tree = ("learner", "gradient_booster", "model", "trees")

    def dig(doc: dict) -> dict:
        for key in tree:
            doc = doc[key]
        return doc[0]

    edit_xgb(path, lambda d: dig(d)["right_children"].__setitem__(0, 999))
    with pytest.raises(IntegrityError, match=r"xgboost.json: refused: tree 0: node 0's right child index 999"):
        TrainingArtifact.load(path)
    path, _, _ = saved(tmp_path / "b", "XGBRegressor")
    edit_xgb(path, lambda d: dig(d)["split_indices"].__setitem__(0, 64))
    with pytest.raises(IntegrityError, match=r"splits on feature id 64, not below n_features 10"):
        TrainingArtifact.load(path)
    path, _, _ = saved(tmp_path / "c", "XGBRegressor")
    # XGBoost's sklearn wrapper copies this attribute's keys onto the estimator when it loads the model.
    edit_xgb(path, lambda d: d["learner"]["attributes"].__setitem__("scikit_learn", '{"predict": 1}'))
    with pytest.raises(IntegrityError, match=r"learner.attributes holds \['scikit_learn'\]"):
        TrainingArtifact.load(path)


def test_tree_families_train_locally_but_not_federated():
    from fedfhe_common.ml import models

    models.check_family("XGBClassifier", DIGITS, local=True)
    models.check_family("XGBRegressor", DIABETES)  # federated through Flower's FedXgb strategies
    with pytest.raises(ConfigError, match=r"'RandomForestRegressor' is a tree family with no federated learner "
                                          r".* train-local.*: LinearRegression, Ridge, Lasso, ElasticNet, "
                                          r"XGBRegressor"):
        models.check_family("RandomForestRegressor", DIABETES)
    with pytest.raises(ConfigError, match=r"'XGBRegressor' does not fit schema 'digits' .*DecisionTreeClassifier"):
        models.check_family("XGBRegressor", DIGITS, local=True)


def test_a_tree_must_see_every_class():
    X, y, schema = load_builtin("digits")
    keep = y != 7
    with pytest.raises(ConfigError, match=r"lack classes \[7\] of schema 'digits'"):
        train_local(X[keep], y[keep], schema, "DecisionTreeClassifier")


def test_check_structure_depth_and_orphans():
    left, right, feature = np.array([1, -1, -1, -1]), np.array([2, -1, -1, -1]), np.array([0, -2, -2, -2])
    with pytest.raises(tree_artifact._Bad, match="node 3 is not reachable"):
        tree_artifact.check_structure(left, right, feature, 4, "t")
    assert tree_artifact.check_structure(left[:3], right[:3], feature[:3], 4, "t") == 1


def test_federated_train_refuses_a_tree_before_registering_or_running(tmp_path):
    from fedfhe_coordinator import config as coord
    from fedfhe_coordinator.train.training import preflight

    path = tmp_path / "coordinator.yaml"
    path.write_text("state_dir: s\nrelease_key: k\nsuperlink: {certfile: a, keyfile: b, ca_certfile: c}\n"
                    "training: {output_dir: out, model: DecisionTreeClassifier, schema: digits}\n")
    with pytest.raises(ConfigError, match=r"'DecisionTreeClassifier' is a tree family with no federated learner"
                                          r".*fedfhe-coordinator train-local"):
        preflight(coord.load(path))


def test_make_demo_refuses_a_tree_family_naming_train_local(capsys):
    from fedfhe_demo.__main__ import parse

    with pytest.raises(SystemExit) as info:
        parse(["--dataset", "diabetes", "--model", "RandomForestRegressor"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'RandomForestRegressor' is a tree family" in err and "fedfhe-coordinator train-local" in err
    with pytest.raises(SystemExit):
        parse(["--dataset", "breast-cancer", "--model", "XGBClassifier"])
    assert "XGBClassifier federates with coordinator.yaml's training.xgboost" in capsys.readouterr().err
