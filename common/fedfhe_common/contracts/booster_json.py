"""An XGBoost booster's JSON that crossed a host, checked with ``json`` alone before XGBoost or Flower parse it.

Federated XGBoost (Flower's FedXgbBagging / FedXgbCyclic) moves whole boosters
as JSON bytes: owners' replies to the coordinator and the global model back to
the owners. Either side may be hostile, so the bytes are size-limited, parsed
with ``json`` (no NaN/Infinity literals, no repeated keys), and the structure is
checked against declared limits (trees, depth, features, classes, leaf size,
objective, base_score) before anything else reads them; what XGBoost or Flower
then gets is the re-serialisation of the checked parse.

It also bridges the two JSON dialects: xgboost 1.6.2 (pinned by concrete-ml
1.9.0, used on every host) writes no ``iteration_indptr``, which Flower's
``aggregate_bagging`` reads; 1.6.2 ignores the field on load and drops it on save.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from fedfhe_common.contracts import tree_artifact
from fedfhe_common.runtime.errors import ConfigError

BASE_SCORE = 0.5  # Concrete ML 1.9 accepts only 0.5; a fixed intercept also keeps xgboost >= 2's auto one out
OBJECTIVES = {"binary": "binary:logistic", "multi": "multi:softprob", "regression": "reg:squarederror"}
OBJECTIVE_PARAMS = {"binary:logistic": "reg_loss_param", "reg:squarederror": "reg_loss_param",
                    "multi:softprob": "softmax_multiclass_param"}
LEARNER_KEYS = {"attributes", "feature_names", "feature_types", "gradient_booster", "learner_model_param", "objective"}
MODEL_KEYS = {"gbtree_model_param", "tree_info", "trees"}
INDPTR = "iteration_indptr"  # written by xgboost >= 2, read by Flower's aggregate_bagging
EARLY_STOP_ATTRIBUTES = {"best_iteration", "best_ntree_limit"}


class BoosterRefused(ValueError):
    """A booster JSON that breaks the limits; the message names what is wrong (the owner's failure reason)."""


@dataclass(frozen=True)
class Limits:
    """What a booster may hold: the schema's shape plus the run's tree budget."""

    n_features: int
    n_classes: int  # 0: regression; 2: binary; k > 2: multi-class (k trees per boosting round)
    max_trees: int
    max_depth: int
    max_bytes: int = 16 << 20
    max_abs_leaf: float = 1e4  # one huge leaf would own the model and flatten every other leaf in FHE quantisation
    min_trees: int = 1

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.n_classes < 0 or self.n_classes == 1:
            raise ConfigError(f"limits: n_features {self.n_features} / n_classes {self.n_classes} make no model")
        if not 0 <= self.min_trees <= self.max_trees <= tree_artifact.MAX_TREES:
            raise ConfigError(f"limits: trees {self.min_trees}..{self.max_trees} not within "
                              f"0..{tree_artifact.MAX_TREES}")
        if not 1 <= self.max_depth <= tree_artifact.MAX_DEPTH:
            raise ConfigError(f"limits: max_depth {self.max_depth} not within 1..{tree_artifact.MAX_DEPTH}")

    @property
    def per_round(self) -> int:
        """Trees one boosting round adds."""
        return self.n_classes if self.n_classes > 2 else 1

    @property
    def objective(self) -> str:
        return OBJECTIVES["regression" if not self.n_classes else "binary" if self.n_classes == 2 else "multi"]

    @property
    def num_class(self) -> int:
        """XGBoost's learner num_class (0 unless multi-class)."""
        return self.n_classes if self.n_classes > 2 else 0


@dataclass(frozen=True)
class Booster:
    """A checked booster: its parsed JSON (1.6.2's dialect, without iteration_indptr) and its size."""

    doc: dict[str, Any]
    n_trees: int
    max_depth: int
    per_round: int

    @property
    def rounds(self) -> int:
        return self.n_trees // self.per_round

    @property
    def trees(self) -> list[dict[str, Any]]:
        return self.doc["learner"]["gradient_booster"]["model"]["trees"]

    def to_bytes(self, indptr: bool = True) -> bytes:
        """The checked JSON; ``indptr``: with Flower's iteration_indptr (to send), else as 1.6.2 writes it."""
        doc = with_indptr(self.doc, self.per_round) if indptr else self.doc
        return json.dumps(doc, separators=(",", ":")).encode()


def _refuse_constant(name: str) -> float:
    raise BoosterRefused(f"the JSON holds {name}, which is not a number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise BoosterRefused("a JSON object repeats a key")
    return out


def _obj(value: Any, where: str, required: set[str], allowed: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BoosterRefused(f"{where} must be a JSON object")
    if not required <= set(value):
        raise BoosterRefused(f"{where} lacks {', '.join(sorted(required - set(value)))}")
    extra = set(value) - (allowed if allowed is not None else required)
    if extra:
        raise BoosterRefused(f"{where} holds unexpected fields {sorted(extra)[:5]}")
    return value


def _int_str(value: Any, where: str) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 9:
        raise BoosterRefused(f"{where} must be a decimal string, got {str(value)[:40]!r}")
    return int(value)


def _small_params(value: Any, where: str) -> None:
    """An objective's parameter block: a few short strings, nothing nested."""
    if not isinstance(value, dict) or len(value) > 8 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) < 64 and len(v) < 64 for k, v in value.items()):
        raise BoosterRefused(f"{where} must map a few names to short strings")


def decode(raw: bytes, max_bytes: int) -> Any:
    """The JSON value of ``raw``, refused when too large, not UTF-8, not JSON, or holding NaN/Infinity."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise BoosterRefused(f"a booster must be bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise BoosterRefused(f"{len(raw)} bytes, above the limit of {max_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except BoosterRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BoosterRefused(f"not JSON: {str(exc)[:160]}") from None


def _check_learner(learner: Any, limits: Limits) -> dict[str, Any]:
    learner = _obj(learner, "learner", LEARNER_KEYS)
    attributes = learner["attributes"]
    if not isinstance(attributes, dict) or not set(attributes) <= EARLY_STOP_ATTRIBUTES:
        # XGBoost's sklearn wrapper sets the "scikit_learn" attribute's keys on the estimator it loads into.
        raise BoosterRefused(f"learner.attributes may hold only {sorted(EARLY_STOP_ATTRIBUTES)}")
    if learner["feature_names"] != [] or learner["feature_types"] != []:
        raise BoosterRefused("feature names and types must be empty (the schema names the inputs)")
    objective = _obj(learner["objective"], "learner.objective", {"name"}, set(OBJECTIVE_PARAMS.values()) | {"name"})
    if objective["name"] != limits.objective:
        raise BoosterRefused(f"objective {str(objective['name'])[:40]!r} is not {limits.objective!r} "
                             f"(the schema's {limits.n_classes or 'regression'} classes)")
    for key in set(objective) - {"name"}:
        if key != OBJECTIVE_PARAMS[limits.objective]:
            raise BoosterRefused(f"learner.objective.{key} does not belong to {limits.objective}")
        _small_params(objective[key], f"learner.objective.{key}")
    softmax = objective.get("softmax_multiclass_param", {})
    if "num_class" in softmax and softmax["num_class"] != str(limits.num_class):
        raise BoosterRefused(f"objective num_class {softmax['num_class']!r} is not {limits.num_class}")
    param = _obj(learner["learner_model_param"], "learner_model_param", {"base_score", "num_class", "num_feature"},
                 {"base_score", "num_class", "num_feature", "num_target", "boost_from_average"})
    if _int_str(param["num_feature"], "num_feature") != limits.n_features:
        raise BoosterRefused(f"num_feature {param['num_feature']} is not the schema's {limits.n_features}")
    if _int_str(param["num_class"], "num_class") != limits.num_class:
        raise BoosterRefused(f"num_class {param['num_class']} is not {limits.num_class} "
                             f"(the schema's {limits.n_classes or 'regression'} classes)")
    if param.get("num_target", "1") != "1":
        raise BoosterRefused("num_target must be 1 (one label)")
    try:
        base = float(param["base_score"]) if isinstance(param["base_score"], str) else math.nan
    except ValueError:
        base = math.nan
    if base != BASE_SCORE:
        raise BoosterRefused(f"base_score {str(param['base_score'])[:40]!r} is not the fixed {BASE_SCORE}")
    return learner


def _check_model(model: Any, limits: Limits) -> tuple[int, int]:
    """The gbtree part: tree count, class order, every tree; return (trees, deepest)."""
    model = _obj(model, "gradient_booster.model", MODEL_KEYS, MODEL_KEYS | {INDPTR})
    gparam = _obj(model["gbtree_model_param"], "gbtree_model_param", {"num_trees"},
                  {"num_trees", "num_parallel_tree", "size_leaf_vector"})
    trees, info = model["trees"], model["tree_info"]
    if not isinstance(trees, list) or not limits.min_trees <= len(trees) <= limits.max_trees:
        got = len(trees) if isinstance(trees, list) else "no list of"
        raise BoosterRefused(f"{got} trees, not within {limits.min_trees}..{limits.max_trees}")
    n = len(trees)
    if _int_str(gparam["num_trees"], "num_trees") != n:
        raise BoosterRefused(f"num_trees {gparam['num_trees']} differs from the {n} trees listed")
    if gparam.get("num_parallel_tree", "1") != "1" or gparam.get("size_leaf_vector", "0") != "0":
        raise BoosterRefused("parallel trees (random forests in XGBoost) and leaf vectors are not supported")
    if n % limits.per_round:
        raise BoosterRefused(f"{n} trees are not whole rounds of {limits.per_round} (one per class)")
    # Concrete ML reads tree i as class i % num_class, and XGBoost by tree_info: they must agree.
    if info != [i % limits.per_round for i in range(n)]:
        raise BoosterRefused(f"tree_info is not one tree per class per round, in class order 0..{limits.per_round - 1}")
    if INDPTR in model and model[INDPTR] != list(range(0, n + 1, limits.per_round)):
        raise BoosterRefused(f"iteration_indptr does not mark rounds of {limits.per_round} trees")
    deepest = 0
    for i, tree in enumerate(trees):
        try:
            deepest = max(deepest, tree_artifact.check_xgb_tree(tree, i, limits.n_features, limits.max_depth))
        except tree_artifact.TreeRefused as exc:
            raise BoosterRefused(str(exc)) from None
        leaves = [v for v, left in zip(tree["split_conditions"], tree["left_children"], strict=True) if left == -1]
        if any(abs(v) > limits.max_abs_leaf for v in leaves):
            raise BoosterRefused(f"tree {i}: a leaf value above {limits.max_abs_leaf:g} in magnitude")
    return n, deepest


def check(doc: Any, limits: Limits) -> Booster:
    """Check a parsed booster against ``limits``; the Booster holds a copy in 1.6.2's dialect."""
    doc = _obj(doc, "the booster", {"learner", "version"})
    version = doc["version"]
    if not (isinstance(version, list) and len(version) == 3 and all(type(v) is int and 0 <= v < 100 for v in version)
            and 1 <= version[0] <= 3):
        raise BoosterRefused("version must be three small integers of XGBoost 1.x to 3.x")
    learner = _check_learner(doc["learner"], limits)
    booster = _obj(learner["gradient_booster"], "gradient_booster", {"name", "model"})
    if booster["name"] != "gbtree":
        raise BoosterRefused(f"booster {str(booster['name'])[:40]!r} is not gbtree")
    n, deepest = _check_model(booster["model"], limits)
    clean = copy.deepcopy(doc)
    clean["learner"]["attributes"] = {}  # early-stopping marks would make predict use fewer trees than FHE does
    clean["learner"]["gradient_booster"]["model"].pop(INDPTR, None)
    return Booster(clean, n, deepest, limits.per_round)


def parse(raw: bytes, limits: Limits) -> Booster:
    """Size-limit, decode and check a booster's JSON bytes; BoosterRefused names the first problem."""
    return check(decode(raw, limits.max_bytes), limits)


def with_indptr(doc: dict[str, Any], per_round: int) -> dict[str, Any]:
    """A copy of a 1.6.2 booster's JSON with the iteration_indptr Flower's aggregate_bagging appends to."""
    out = copy.deepcopy(doc)
    model = out["learner"]["gradient_booster"]["model"]
    model[INDPTR] = list(range(0, len(model["trees"]) + 1, per_round))
    return out


def append_trees(base: Booster | None, new: Booster) -> Booster:
    """Bagging: ``base``'s trees then ``new``'s, renumbered, with their classes (tree_info) kept.

    Flower's ``aggregate_bagging`` appends ``num_parallel_tree`` trees with class 0: right for one
    local round of a binary or regression model, wrong for multi-class (k trees per round) and for
    several local rounds. This is the same aggregation without those two restrictions.
    """
    if base is None:
        return new
    if base.per_round != new.per_round:
        raise BoosterRefused(f"{new.per_round} trees per round do not extend a model of {base.per_round}")
    doc = copy.deepcopy(base.doc)
    model = doc["learner"]["gradient_booster"]["model"]
    for tree, cls in zip(new.trees, new.doc["learner"]["gradient_booster"]["model"]["tree_info"], strict=True):
        model["trees"].append({**copy.deepcopy(tree), "id": len(model["trees"])})
        model["tree_info"].append(cls)
    model["gbtree_model_param"]["num_trees"] = str(len(model["trees"]))
    return Booster(doc, len(model["trees"]), max(base.max_depth, new.max_depth), base.per_round)


def scale_leaves(booster: Booster, factor: float) -> Booster:
    """Every leaf value (and node weight) times ``factor``: one owner's share of a bagging round's average."""
    if not 0 < factor <= 1:
        raise ValueError(f"leaf scale {factor} not in (0, 1]")
    doc = copy.deepcopy(booster.doc)
    for tree in doc["learner"]["gradient_booster"]["model"]["trees"]:
        conditions = tree["split_conditions"]
        for node, left in enumerate(tree["left_children"]):
            if left == -1:  # a leaf: xgboost keeps its value in split_conditions
                conditions[node] = float(conditions[node]) * factor
        tree["base_weights"] = [float(w) * factor for w in tree["base_weights"]]
    return Booster(doc, booster.n_trees, booster.max_depth, booster.per_round)


def _node_depths(tree: dict[str, Any]) -> list[int]:
    depths = [0] * len(tree["left_children"])
    for node, (left, right) in enumerate(zip(tree["left_children"], tree["right_children"], strict=True)):
        if left != -1:  # xgboost numbers children after their parent
            depths[left] = depths[right] = depths[node] + 1
    return depths


def pad_depth(booster: Booster, depth: int) -> Booster:
    """The same predictions from a booster whose first tree reaches ``depth``: a deepest leaf of it becomes
    splits whose two children both hold that leaf's value, down to ``depth``.

    Why: Concrete ML's circuit, and so the evaluation keys an owner uploads, follow the depth the trees
    reach, not the configured max_depth; a retrain whose trees happen to stop one level higher would cost
    every owner a new key upload (bench/results/trees.json). Compiled at the configured depth, retrains
    with unchanged parameters keep the key parameters, and owners reuse their keys (fedfhe_owner.predict.key_reuse).
    """
    if booster.max_depth >= depth or not booster.trees:
        return booster
    doc = copy.deepcopy(booster.doc)
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    depths = _node_depths(tree)
    node = max((i for i, left in enumerate(tree["left_children"]) if left == -1), key=lambda i: depths[i])
    for _ in range(depth - depths[node]):
        first = len(tree["left_children"])
        value, weight, hessian = tree["split_conditions"][node], tree["base_weights"][node], tree["sum_hessian"][node]
        tree["left_children"][node], tree["right_children"][node] = first, first + 1
        tree["split_indices"][node], tree["default_left"][node] = 0, 1
        tree["split_conditions"][node] = 0.0  # either way: both children give the leaf's value
        for _child in range(2):
            tree["left_children"].append(-1)
            tree["right_children"].append(-1)
            tree["parents"].append(node)
            tree["split_indices"].append(0)
            tree["split_conditions"].append(value)
            tree["split_type"].append(0)
            tree["default_left"].append(0)
            tree["base_weights"].append(weight)
            tree["loss_changes"].append(0.0)
            tree["sum_hessian"].append(hessian / 2)
        node = first
    tree["tree_param"]["num_nodes"] = str(len(tree["left_children"]))
    return Booster(doc, booster.n_trees, depth, booster.per_round)


def extends(global_model: Booster | None, reply: Booster) -> bool:
    """Cyclic: does ``reply`` keep every tree of ``global_model`` unchanged, in place, and add after them?"""
    if global_model is None:
        return True
    n = global_model.n_trees
    return reply.n_trees > n and reply.trees[:n] == global_model.trees
