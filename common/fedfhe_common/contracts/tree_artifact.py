"""The tree part of the training-artifact contract: trees as plain node arrays or XGBoost's JSON, checked first.

No pickle crosses a host boundary. A scikit-learn tree (or each tree of a random
forest) is written as its node arrays in ``trees.npz`` (read with
allow_pickle=False) and rebuilt from them through sklearn's ``Tree`` state; an
XGBoost model is written as XGBoost's own JSON model (``xgboost.json``), and
XGBoost is handed the re-serialisation of the checked parse, so it reads exactly
what was checked. Before any estimator is built: node indices in range, a leaf
has both children -1, feature ids below the schema's n_features, every node
reached exactly once from the root (no cycle, no shared node, no orphan), depth
and size bounds, finite numbers, classes equal to the schema's.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import IntegrityError

NPZ_MEMBER = "trees.npz"
XGB_MEMBER = "xgboost.json"
# Bounds on what compile accepts: an FHE tree costs per node, and Concrete's circuit grows with both.
MAX_DEPTH = 12
MAX_TREES = 500
MAX_NODES = 200_000  # over all trees of one model
MAX_XGB_JSON_BYTES = 64 << 20
XGB_OBJECTIVES = {"XGBClassifier": ("binary:logistic", "multi:softprob"), "XGBRegressor": ("reg:squarederror",)}
XGB_ROOT_PARENT = 2147483647  # what XGBoost writes as the root's parent
# Node arrays of a scikit-learn tree (sklearn.tree._tree.NODE_DTYPE) with the dtype kind each must have.
NODE_FIELDS = {"left_child": "i", "right_child": "i", "feature": "i", "threshold": "f", "impurity": "f",
               "n_node_samples": "i", "weighted_n_node_samples": "f", "missing_go_to_left": "u"}
NPZ_KEYS = {*NODE_FIELDS, "value", "tree_sizes", "classes"}


@dataclass(frozen=True)
class SklearnTrees:
    """One tree (DecisionTree*) or a forest (RandomForest*): node arrays of all trees, end to end."""

    tree_sizes: np.ndarray  # nodes per tree
    nodes: dict[str, np.ndarray]  # NODE_FIELDS, each (total nodes,)
    value: np.ndarray  # (total nodes, classes) or (total nodes, 1) for a regressor
    classes: np.ndarray  # the schema's classes (empty for a regressor)
    depths: tuple[int, ...]


@dataclass(frozen=True)
class XGBoostModel:
    """XGBoost's JSON model, as re-serialised from the checked parse."""

    raw: bytes
    n_trees: int


TreeModel = SklearnTrees | XGBoostModel


def member(family: str) -> str:
    """The artifact file that holds a tree family's model."""
    return XGB_MEMBER if family.startswith("XGB") else NPZ_MEMBER


class _Bad(Exception):
    """A reason the tree part is refused; load turns it into an IntegrityError naming the file."""


TreeRefused = _Bad  # what check_structure and check_xgb_tree raise (fedfhe_common.contracts.booster_json catches it)


def check_structure(left: np.ndarray, right: np.ndarray, feature: np.ndarray, n_features: int,
                    where: str, max_depth: int = MAX_DEPTH) -> int:
    """Check one tree's links and split features; return its depth (a lone leaf has depth 0)."""
    n = len(left)
    if n < 1 or len(right) != n or len(feature) != n:
        raise _Bad(f"{where}: needs at least one node and arrays of one length")
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        i = int(np.flatnonzero(leaf != (right == -1))[0])
        raise _Bad(f"{where}: node {i} has exactly one child (a leaf has both children -1)")
    for name, child in (("left", left), ("right", right)):
        bad = ~leaf & ((child < 1) | (child >= n))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _Bad(f"{where}: node {i}'s {name} child index {int(child[i])} is out of range 1..{n - 1}")
    bad = ~leaf & ((feature < 0) | (feature >= n_features))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _Bad(f"{where}: node {i} splits on feature id {int(feature[i])}, not below n_features {n_features}")
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    frontier, depth = np.array([0]), 0
    while True:
        inner = frontier[~leaf[frontier]]
        children = np.concatenate([left[inner], right[inner]])
        if children.size == 0:
            break
        again = children[seen[children]]
        if again.size or len(np.unique(children)) != children.size:
            node = int(again[0]) if again.size else int(children[np.argmax(np.bincount(children))])
            raise _Bad(f"{where}: node {node} is reached twice from the root (a cycle or a shared node)")
        seen[children] = True
        frontier, depth = children, depth + 1
        if depth > max_depth:
            raise _Bad(f"{where}: deeper than {max_depth} levels")
    if not seen.all():
        raise _Bad(f"{where}: node {int(np.flatnonzero(~seen)[0])} is not reachable from the root")
    return depth


def _expected_classes(family: str, schema: DatasetSchema) -> np.ndarray:
    if family in models.TREE_CLASSIFIERS:
        return np.asarray(schema.label_codes, dtype=np.int64)
    return np.zeros(0, np.int64)


# ---------------------------------------------------------------- scikit-learn trees (NPZ)

def _sklearn_from_estimator(estimator: Any, family: str, schema: DatasetSchema) -> SklearnTrees:
    trees = estimator.estimators_ if family.startswith("RandomForest") else [estimator]
    fields: dict[str, list[np.ndarray]] = {name: [] for name in NODE_FIELDS}
    values = []
    for t in trees:
        state = t.tree_.__getstate__()
        if t.tree_.n_outputs != 1:
            raise ValueError("only single-output trees are supported")
        for name in NODE_FIELDS:
            fields[name].append(np.asarray(state["nodes"][name]))
        values.append(np.asarray(state["values"], dtype=np.float64)[:, 0, :])
    nodes = {name: np.concatenate(parts) for name, parts in fields.items()}
    model = SklearnTrees(np.array([t.tree_.node_count for t in trees], dtype=np.int64), nodes,
                         np.concatenate(values), _expected_classes(family, schema), ())
    return _check_sklearn(model, family, schema)


def _check_sklearn(model: SklearnTrees, family: str, schema: DatasetSchema) -> SklearnTrees:
    sizes = model.tree_sizes
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or not 1 <= len(sizes) <= MAX_TREES:
        raise _Bad(f"tree_sizes must list 1..{MAX_TREES} trees")
    if family.startswith("DecisionTree") and len(sizes) != 1:
        raise _Bad(f"{family} holds one tree, not {len(sizes)}")
    if (sizes < 1).any() or (sizes > MAX_NODES).any() or int(sizes.sum()) > MAX_NODES:
        raise _Bad(f"every tree needs a node and all trees together at most {MAX_NODES} nodes")
    total = int(sizes.sum())
    for name, kind in NODE_FIELDS.items():
        arr = model.nodes[name]
        if arr.shape != (total,) or arr.dtype.kind not in ("iu" if kind in "iu" else "f"):
            raise _Bad(f"{name} must be {total} {'integers' if kind in 'iu' else 'real numbers'}, "
                       f"got {arr.dtype} {arr.shape}")
    expected = _expected_classes(family, schema)
    if not np.array_equal(model.classes, expected):
        raise _Bad(f"classes {model.classes.tolist()} differ from the schema's {expected.tolist()}")
    width = max(1, len(expected))
    if model.value.shape != (total, width) or model.value.dtype.kind != "f":
        raise _Bad(f"value must be {total} x {width} real numbers, got {model.value.dtype} {model.value.shape}")
    finite = [model.value, model.nodes["threshold"], model.nodes["impurity"], model.nodes["weighted_n_node_samples"]]
    if not all(np.isfinite(a).all() for a in finite):
        raise _Bad("node values or thresholds hold NaN or infinite values")
    if not np.isin(model.nodes["missing_go_to_left"], (0, 1)).all():
        raise _Bad("missing_go_to_left must be 0 or 1")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    depths = []
    for i, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        left, right, feature = (model.nodes[k][start:start + size].astype(np.int64)
                                for k in ("left_child", "right_child", "feature"))
        depths.append(check_structure(left, right, feature, schema.n_features, f"tree {i}"))
    return SklearnTrees(sizes, model.nodes, model.value, model.classes, tuple(depths))


def _write_npz(model: SklearnTrees, path: Path) -> None:
    np.savez(path, tree_sizes=model.tree_sizes, value=model.value, classes=model.classes, **model.nodes)


def _read_npz(path: Path, family: str, schema: DatasetSchema) -> SklearnTrees:
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        if keys != NPZ_KEYS:
            raise _Bad(f"members {sorted(keys)} are not exactly {sorted(NPZ_KEYS)}")
        arrays = {k: npz[k] for k in NPZ_KEYS}
    nodes = {name: arrays[name] for name in NODE_FIELDS}
    return _check_sklearn(SklearnTrees(arrays["tree_sizes"], nodes, arrays["value"], arrays["classes"], ()),
                          family, schema)


def _sklearn_tree(model: SklearnTrees, index: int, n_features: int, template: Any) -> Any:
    """One fitted DecisionTree* from its node arrays, through sklearn's Tree state (plain arrays, no pickle)."""
    from sklearn.base import clone  # lazy: scikit-learn takes ~2 s to import
    from sklearn.tree._tree import NODE_DTYPE, Tree  # lazy: scikit-learn takes ~2 s to import

    start = int(model.tree_sizes[:index].sum())
    size = int(model.tree_sizes[index])
    nodes = np.zeros(size, dtype=NODE_DTYPE)
    for name in NODE_FIELDS:
        nodes[name] = model.nodes[name][start:start + size]
    leaf = nodes["left_child"] == -1
    nodes["feature"][leaf] = -2  # sklearn's TREE_UNDEFINED on leaves
    nodes["threshold"][leaf] = -2.0
    width = model.value.shape[1]
    tree = Tree(n_features, np.array([width], dtype=np.intp), 1)
    tree.__setstate__({"max_depth": model.depths[index], "node_count": size, "nodes": nodes,
                       "values": np.ascontiguousarray(model.value[start:start + size].reshape(size, 1, width))})
    est = clone(template)
    est.tree_ = tree
    _fitted_attributes(est, model, n_features)
    est.max_features_ = n_features
    return est


def _fitted_attributes(est: Any, model: SklearnTrees, n_features: int) -> None:
    est.n_features_in_ = n_features
    est.n_outputs_ = 1
    if model.classes.size:
        est.classes_ = model.classes.copy()
        est.n_classes_ = int(model.classes.size)


def _sklearn_estimator(model: SklearnTrees, family: str, params: dict[str, Any], schema: DatasetSchema) -> Any:
    est = models.build(family, params)
    if family.startswith("DecisionTree"):
        return _sklearn_tree(model, 0, schema.n_features, est)
    tree_family = "DecisionTreeClassifier" if family in models.TREE_CLASSIFIERS else "DecisionTreeRegressor"
    template = models.build(tree_family, {k: getattr(est, k) for k in est.estimator_params})
    est.estimator_ = template
    est.estimators_ = [_sklearn_tree(model, i, schema.n_features, template) for i in range(len(model.tree_sizes))]
    _fitted_attributes(est, model, schema.n_features)
    return est


# ---------------------------------------------------------------- XGBoost (its JSON model)

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Bad("a JSON object repeats a key")
    return out


def _obj(value: Any, where: str, keys: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be a JSON object")
    if keys is not None and not keys <= set(value):
        raise _Bad(f"{where} lacks {', '.join(sorted(keys - set(value)))}")
    return value


def _int_str(value: Any, where: str) -> int:
    """XGBoost writes its model parameters as decimal strings."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 12:
        raise _Bad(f"{where} must be a decimal string, got {value!r}")
    return int(value)


def _numbers(value: Any, n: int, where: str, integer: bool) -> np.ndarray:
    ok = (int,) if integer else (int, float)
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(v, ok) and not isinstance(v, bool) for v in value):
        raise _Bad(f"{where} must list {n} {'integers' if integer else 'numbers'}")
    arr = np.asarray(value, dtype=np.int64 if integer else np.float64) if n else np.zeros(0)
    if not integer and not np.isfinite(arr).all():
        raise _Bad(f"{where} holds NaN or infinite values")
    return arr


def check_xgb_tree(tree: Any, index: int, n_features: int, max_depth: int = MAX_DEPTH) -> int:
    """Check one tree of XGBoost's JSON model (links, split features, finite numbers); return its depth."""
    where = f"tree {index}"
    fields = {"left_children", "right_children", "parents", "split_indices", "split_conditions", "split_type",
              "default_left", "base_weights", "loss_changes", "sum_hessian", "categories", "categories_nodes",
              "categories_segments", "categories_sizes", "id", "tree_param"}
    tree = _obj(tree, where, fields)
    if set(tree) != fields:
        raise _Bad(f"{where}: unexpected fields {sorted(set(tree) - fields)}")
    if tree["id"] != index or isinstance(tree["id"], bool):
        raise _Bad(f"{where}: id {tree['id']!r} is not its position {index}")
    param = _obj(tree["tree_param"], f"{where}.tree_param", {"num_nodes", "num_feature"})
    n = _int_str(param["num_nodes"], f"{where}.tree_param.num_nodes")
    if not 1 <= n <= MAX_NODES:
        raise _Bad(f"{where}: {n} nodes, not in 1..{MAX_NODES}")
    if _int_str(param["num_feature"], f"{where}.tree_param.num_feature") != n_features:
        raise _Bad(f"{where}: num_feature {param['num_feature']} is not the schema's {n_features}")
    if param.get("num_deleted", "0") != "0" or param.get("size_leaf_vector", "0") != "0":
        raise _Bad(f"{where}: deleted nodes or leaf vectors are not supported")
    left = _numbers(tree["left_children"], n, f"{where}.left_children", True)
    right = _numbers(tree["right_children"], n, f"{where}.right_children", True)
    feature = _numbers(tree["split_indices"], n, f"{where}.split_indices", True)
    depth = check_structure(left, right, np.where(left == -1, 0, feature), n_features, where, max_depth)
    parents = _numbers(tree["parents"], n, f"{where}.parents", True)
    inner = np.flatnonzero(left != -1)
    if parents[0] != XGB_ROOT_PARENT or (parents[left[inner]] != inner).any() or \
            (parents[right[inner]] != inner).any():
        raise _Bad(f"{where}: parents do not match the children links")
    for name in ("split_conditions", "base_weights", "loss_changes", "sum_hessian"):
        _numbers(tree[name], n, f"{where}.{name}", False)
    if (_numbers(tree["split_type"], n, f"{where}.split_type", True) != 0).any():
        raise _Bad(f"{where}: categorical splits are not supported")
    if not np.isin(_numbers(tree["default_left"], n, f"{where}.default_left", True), (0, 1)).all():
        raise _Bad(f"{where}: default_left must be 0 or 1")
    if any(tree[k] != [] for k in ("categories", "categories_nodes", "categories_segments", "categories_sizes")):
        raise _Bad(f"{where}: categorical splits are not supported")
    return depth


def _check_xgb(doc: Any, family: str, schema: DatasetSchema) -> XGBoostModel:
    doc = _obj(doc, "the model", {"learner", "version"})
    if set(doc) != {"learner", "version"}:
        raise _Bad(f"unexpected top-level fields {sorted(set(doc) - {'learner', 'version'})}")
    version = doc["version"]
    if not (isinstance(version, list) and len(version) == 3 and all(type(v) is int for v in version)):
        raise _Bad("version must be three integers")
    learner = _obj(doc["learner"], "learner",
                   {"attributes", "feature_names", "feature_types", "gradient_booster", "learner_model_param",
                    "objective"})
    attributes = _obj(learner["attributes"], "learner.attributes")
    if not set(attributes) <= {"best_iteration", "best_ntree_limit"}:
        # The scikit_learn attribute would set arbitrary estimator attributes on load.
        raise _Bad(f"learner.attributes holds {sorted(set(attributes) - {'best_iteration', 'best_ntree_limit'})}")
    learner["attributes"] = {}  # early-stopping marks would make predict use fewer trees than the FHE circuit
    if learner["feature_names"] != [] or learner["feature_types"] != []:
        raise _Bad("feature names and types must be empty (the schema names no columns)")
    objective = _obj(learner["objective"], "learner.objective", {"name"})
    if objective["name"] not in XGB_OBJECTIVES[family]:
        raise _Bad(f"objective {objective['name']!r} is not one of {', '.join(XGB_OBJECTIVES[family])} for {family}")
    param = _obj(learner["learner_model_param"], "learner.learner_model_param",
                 {"base_score", "num_class", "num_feature"})
    if _int_str(param["num_feature"], "num_feature") != schema.n_features:
        raise _Bad(f"num_feature {param['num_feature']} is not the schema's {schema.n_features}")
    try:
        base = float(param["base_score"])
    except (TypeError, ValueError):
        raise _Bad(f"base_score {param['base_score']!r} is not a number") from None
    if not np.isfinite(base):
        raise _Bad("base_score is not finite")
    k = len(schema.classes) if family == "XGBClassifier" else 0
    num_class = _int_str(param["num_class"], "num_class")
    if num_class != (k if k > 2 else 0) or param.get("num_target", "1") != "1":
        raise _Bad(f"num_class {num_class} does not fit the schema's {k or 'regression'} classes")
    if objective["name"] == ("multi:softprob" if k <= 2 else "binary:logistic"):
        raise _Bad(f"objective {objective['name']!r} does not fit the schema's {k} classes")
    booster = _obj(learner["gradient_booster"], "gradient_booster", {"name", "model"})
    if booster["name"] != "gbtree":
        raise _Bad(f"booster {booster['name']!r} is not gbtree")
    model = _obj(booster["model"], "gradient_booster.model", {"gbtree_model_param", "tree_info", "trees"})
    gparam = _obj(model["gbtree_model_param"], "gbtree_model_param", {"num_trees"})
    trees = model["trees"]
    if not isinstance(trees, list) or not 1 <= len(trees) <= MAX_TREES:
        raise _Bad(f"trees must list 1..{MAX_TREES} trees")
    if _int_str(gparam["num_trees"], "num_trees") != len(trees) or gparam.get("num_parallel_tree", "1") != "1":
        raise _Bad("num_trees does not match the trees listed (or parallel trees)")
    info = _numbers(model["tree_info"], len(trees), "tree_info", True)
    if ((info < 0) | (info >= max(1, num_class))).any():
        raise _Bad(f"tree_info names a class outside 0..{max(1, num_class) - 1}")
    if (info != np.arange(len(trees)) % max(1, num_class)).any():
        # Concrete ML (hummingbird) reads tree i as class i % num_class: any other order is another model in FHE.
        raise _Bad("tree_info is not one tree per class per round in class order (0, 1, .., num_class - 1)")
    total = 0
    for i, tree in enumerate(trees):
        check_xgb_tree(tree, i, schema.n_features)
        total += len(tree["left_children"])
    if total > MAX_NODES:
        raise _Bad(f"all trees together hold {total} nodes, above {MAX_NODES}")
    return XGBoostModel(json.dumps(doc, separators=(",", ":")).encode(), len(trees))


def _parse_xgb(raw: bytes, family: str, schema: DatasetSchema) -> XGBoostModel:
    if len(raw) > MAX_XGB_JSON_BYTES:
        raise _Bad(f"{len(raw)} bytes, above {MAX_XGB_JSON_BYTES}")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"not JSON: {str(exc)[:200]}") from None
    return _check_xgb(doc, family, schema)


def _xgb_estimator(model: XGBoostModel, family: str, params: dict[str, Any], schema: DatasetSchema) -> Any:
    est = models.build(family, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Loading a native XGBoost model with Scikit-Learn interface": intended
        est.load_model(bytearray(model.raw))
    if family == "XGBClassifier":
        est.n_classes_ = len(schema.classes)
        est.classes_ = np.asarray(schema.label_codes, dtype=np.int64)
    return est


# ---------------------------------------------------------------- the contract

def from_estimator(estimator: Any, family: str, schema: DatasetSchema) -> TreeModel:
    """The checked tree part of a fitted estimator (checked as a reader will check it)."""
    try:
        if family.startswith("XGB"):
            return _parse_xgb(bytes(estimator.get_booster().save_raw("json")), family, schema)
        return _sklearn_from_estimator(estimator, family, schema)
    except _Bad as exc:
        raise IntegrityError(f"{family}: the fitted model cannot be stored: {exc}") from None


def from_booster_json(raw: bytes, family: str, schema: DatasetSchema) -> XGBoostModel:
    """The checked tree part of a federated booster's JSON (the same checks ``read`` applies to the artifact)."""
    try:
        return _parse_xgb(raw, family, schema)
    except _Bad as exc:
        raise IntegrityError(f"{family}: the federated booster cannot be stored: {exc}") from None


def write(model: TreeModel, directory: Path) -> str:
    """Write the tree part into ``directory``; return the member's name (for the manifest)."""
    if isinstance(model, XGBoostModel):
        (directory / XGB_MEMBER).write_bytes(model.raw)
        return XGB_MEMBER
    _write_npz(model, directory / NPZ_MEMBER)
    return NPZ_MEMBER


def read(directory: Path, family: str, schema: DatasetSchema) -> TreeModel:
    """Read and check the tree part of a verified artifact; any problem is an IntegrityError naming it."""
    path = Path(directory) / member(family)
    try:
        if family.startswith("XGB"):
            return _parse_xgb(path.read_bytes(), family, schema)
        return _read_npz(path, family, schema)
    except _Bad as exc:
        raise IntegrityError(f"{path}: refused: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:  # zip, npy header: a malformed member
        raise IntegrityError(f"{path}: malformed: {str(exc)[:300]}") from None


def to_estimator(model: TreeModel, family: str, params: dict[str, Any], schema: DatasetSchema) -> Any:
    """A fitted scikit-learn or XGBoost estimator, built only from checked arrays or checked JSON."""
    if isinstance(model, XGBoostModel):
        return _xgb_estimator(model, family, params, schema)
    return _sklearn_estimator(model, family, params, schema)


def describe(model: TreeModel) -> dict[str, Any]:
    """Size figures for metrics and progress lines."""
    if isinstance(model, XGBoostModel):
        return {"trees": model.n_trees, "format": "xgboost-json", "bytes": len(model.raw)}
    return {"trees": len(model.tree_sizes), "nodes": int(model.tree_sizes.sum()), "max_depth": max(model.depths),
            "format": "node-arrays"}
