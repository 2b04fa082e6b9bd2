"""The federated XGBoost contract both apps share: the run's boosting parameters and the limits of each booster.

The coordinator and every owner derive the same ``booster_json.Limits`` from the
run's parameters and the schema, so a reply is refused by the coordinator, and a
global model by an owner, by one rule. Bagging (Flower's FedXgbBagging): every
owner boosts ``local_rounds`` rounds on the global model and replies with those new
trees only; the coordinator appends them all. Cyclic (FedXgbCyclic): one owner per
server round boosts on the global model and replies with the whole model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from fedfhe_common.contracts import booster_json, tree_artifact
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.runtime.errors import ConfigError

Mode = Literal["bagging", "cyclic"]
MODES: tuple[Mode, ...] = ("bagging", "cyclic")
# How bagging adds a round's trees: "sum" as Flower's FedXgbBagging does (N owners move the model N boosting
# steps), "average" each owner's leaves times its share of the round's rows (one row-weighted step); "auto":
# average for a classifier, sum for a regressor (base_score is fixed at 0.5, so a regressor's first trees must
# climb to its target's mean: averaged steps take N times as many rounds to get there).
COMBINES = ("auto", "average", "sum")


def resolve_combine(combine: str, schema: DatasetSchema) -> str:
    """``auto`` made "average" or "sum" for the schema's task; ConfigError for another name."""
    if combine not in COMBINES:
        raise ConfigError(f"training.xgboost.combine: {combine!r} is not one of {', '.join(COMBINES)}")
    if combine == "auto":
        return "average" if schema.is_classifier else "sum"
    return combine
FAMILIES = {"XGBClassifier", "XGBRegressor"}

# Keys of a train/evaluate instruction's ConfigRecord (beside fl_contract.MODEL, the family), set by the ServerApp
# from the run config; every owner checks them (read_instruction) before it reads a row.
XGB_MODE = "xgb-mode"
XGB_PARAMS = "xgb-params"  # json.dumps(BoostParams.to_dict())
XGB_MAX_TREES = "xgb-max-trees"  # the global model's tree budget (the run's planned trees, TreeBudget.check_run)
MAX_INSTRUCTION_PARAMS_BYTES = 4096

# Node config keys (owner.yaml privacy.trees, set by `fedfhe-owner supernode`): the owner's OwnerTreePolicy.
NODE_MAX_DEPTH = "privacy-trees-max-depth"
NODE_MAX_TREES = "privacy-trees-max-trees"
NODE_MIN_CHILD_WEIGHT = "privacy-trees-min-child-weight"


@dataclass(frozen=True)
class BoostParams:
    """The boosting hyper-parameters every owner trains with (XGBoost's native names)."""

    max_depth: int = 3
    eta: float = 0.3
    local_rounds: int = 1
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    max_abs_leaf: float = 1e4
    seed: int = 0
    nthread: int = 1

    def __post_init__(self) -> None:
        checks = {
            "max_depth": 1 <= self.max_depth <= tree_artifact.MAX_DEPTH,
            "eta": 0 < self.eta <= 1,
            "local_rounds": 1 <= self.local_rounds <= 100,
            "min_child_weight": 0 <= self.min_child_weight < 1e6,
            "reg_lambda": 0 <= self.reg_lambda < 1e6,
            "subsample": 0 < self.subsample <= 1,
            "colsample_bytree": 0 < self.colsample_bytree <= 1,
            "max_abs_leaf": 0 < self.max_abs_leaf <= 1e12,
            "seed": 0 <= self.seed < 2**31,
            "nthread": 1 <= self.nthread <= 256,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"xgboost parameters out of range: {', '.join(bad)}")

    @classmethod
    def from_mapping(cls, data: Any, where: str = "xgboost parameters") -> BoostParams:
        """From a run config or YAML mapping: unknown names and wrong types are refused, naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a mapping")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown parameter {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(sorted(known))})")
        out: dict[str, Any] = {}
        for name, value in data.items():
            want = int if known[name] == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (want is int and
                                                                                   not isinstance(value, int)):
                raise ConfigError(f"{where}: {name} must be {'an integer' if want is int else 'a number'}, "
                                  f"got {value!r}")
            out[name] = want(value)
        try:
            return cls(**out)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def xgb_params(self, limits: booster_json.Limits) -> dict[str, Any]:
        """``xgboost.train``'s params: the objective from the schema, base_score fixed (booster_json.BASE_SCORE)."""
        params: dict[str, Any] = {
            "objective": limits.objective, "base_score": booster_json.BASE_SCORE, "max_depth": self.max_depth,
            "eta": self.eta, "min_child_weight": self.min_child_weight, "lambda": self.reg_lambda,
            "subsample": self.subsample, "colsample_bytree": self.colsample_bytree, "seed": self.seed,
            "nthread": self.nthread, "tree_method": "exact", "verbosity": 0,
        }
        if limits.num_class:
            params["num_class"] = limits.num_class
        return params


@dataclass(frozen=True)
class OwnerTreePolicy:
    """An owner's own bounds on what a boosting run may ask of it, checked before it reads a row.

    A booster's leaves and thresholds come from the owner's rows: a leaf is the mean gradient of the
    rows that reach it (with squared error, their mean residual), and a split threshold lies between
    two of the owner's feature values. Few rows per leaf and many, deep trees tell more about single
    rows; ``min_child_weight`` is the Hessian mass a leaf needs (rows for squared error, at least 4x
    the rows for logistic loss), so its floor bounds how few rows any leaf speaks for.
    """

    max_depth: int = 6
    max_trees: int = 200
    min_child_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= tree_artifact.MAX_DEPTH:
            raise ConfigError(f"privacy.trees.max_depth: {self.max_depth} not within 1..{tree_artifact.MAX_DEPTH}")
        if not 1 <= self.max_trees <= tree_artifact.MAX_TREES:
            raise ConfigError(f"privacy.trees.max_trees: {self.max_trees} not within 1..{tree_artifact.MAX_TREES}")
        if not 0 <= self.min_child_weight < 1e6:
            raise ConfigError(f"privacy.trees.min_child_weight: {self.min_child_weight} not within [0, 1e6)")

    def node_config(self) -> dict[str, int | float]:
        return {NODE_MAX_DEPTH: self.max_depth, NODE_MAX_TREES: self.max_trees,
                NODE_MIN_CHILD_WEIGHT: float(self.min_child_weight)}

    @classmethod
    def from_node_config(cls, node: Any) -> OwnerTreePolicy:
        """The policy `fedfhe-owner supernode` wrote into the node config (the defaults where a key is absent)."""
        default = cls()
        try:
            return cls(int(node.get(NODE_MAX_DEPTH, default.max_depth)),
                       int(node.get(NODE_MAX_TREES, default.max_trees)),
                       float(node.get(NODE_MIN_CHILD_WEIGHT, default.min_child_weight)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"node config privacy-trees-*: {exc}") from None

    def check(self, params: BoostParams, max_trees: int) -> None:
        """ConfigError naming each bound the run's instruction exceeds."""
        bad = []
        if params.max_depth > self.max_depth:
            bad.append(f"max_depth {params.max_depth} above this owner's {self.max_depth}")
        if max_trees > self.max_trees:
            bad.append(f"{max_trees} trees above this owner's {self.max_trees}")
        if params.min_child_weight < self.min_child_weight:
            bad.append(f"min_child_weight {params.min_child_weight:g} below this owner's floor "
                       f"{self.min_child_weight:g}")
        if bad:
            raise ConfigError(f"the run's boosting asks more than this owner allows: {'; '.join(bad)}")


MAX_N_BITS = 8  # compile's TREE_AUTO_MAX_N_BITS: keys grow with n_bits (a depth-3 tree: 38 MB at 4 bits, 59 at 6)


@dataclass(frozen=True)
class TreeBudget:
    """coordinator.yaml's bounds on a federated booster: what the FHE circuit (time, keys) can afford."""

    max_trees: int = 60
    max_depth: int = 4
    max_n_bits: int = 6

    def __post_init__(self) -> None:
        if not 1 <= self.max_trees <= tree_artifact.MAX_TREES:
            raise ConfigError(f"xgboost budget: max_trees {self.max_trees} not within 1..{tree_artifact.MAX_TREES}")
        if not 1 <= self.max_depth <= tree_artifact.MAX_DEPTH:
            raise ConfigError(f"xgboost budget: max_depth {self.max_depth} not within 1..{tree_artifact.MAX_DEPTH}")
        if not 2 <= self.max_n_bits <= MAX_N_BITS:
            raise ConfigError(f"xgboost budget: max_n_bits {self.max_n_bits} not within 2..{MAX_N_BITS}")

    @classmethod
    def from_mapping(cls, data: Any, where: str = "training.xgboost_budget") -> TreeBudget:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a mapping of max_trees, max_depth, max_n_bits")
        unknown = sorted(set(data) - {"max_trees", "max_depth", "max_n_bits"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ConfigError(f"{where}: {', '.join(bad)} must be integers")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def planned_trees(self, schema: DatasetSchema, params: BoostParams, mode: Mode, rounds: int,
                      owners: int) -> int:
        """The trees a run will build (bagging: every owner every round; cyclic: one owner per round)."""
        k = n_classes(schema)
        per_round = k if k > 2 else 1
        return rounds * (owners if mode == "bagging" else 1) * params.local_rounds * per_round

    def check_run(self, schema: DatasetSchema, params: BoostParams, mode: Mode, rounds: int,
                  owners: int, n_bits: int | None = None) -> int:
        """Refuse (ConfigError, naming the figures) a run whose model would exceed the budget; return its trees."""
        if mode not in MODES:
            raise ConfigError(f"xgboost mode {mode!r}: one of {', '.join(MODES)}")
        if rounds < 1 or owners < 1:
            raise ConfigError(f"a federated booster needs rounds >= 1 and owners >= 1, got {rounds} and {owners}")
        if params.max_depth > self.max_depth:
            raise ConfigError(f"xgboost max_depth {params.max_depth} exceeds the budget's {self.max_depth}")
        if n_bits is not None and not 2 <= n_bits <= self.max_n_bits:
            raise ConfigError(f"n_bits {n_bits} exceeds the budget's {self.max_n_bits} (or is below 2)")
        trees = self.planned_trees(schema, params, mode, rounds, owners)
        if trees > self.max_trees:
            per_round = self.planned_trees(schema, params, mode, 1, 1) // params.local_rounds
            raise ConfigError(f"{mode}: {rounds} rounds x {owners if mode == 'bagging' else 1} owner(s) x "
                              f"{params.local_rounds} local round(s) x {per_round} tree(s) = {trees} trees, above "
                              f"the budget's max_trees {self.max_trees}")
        return trees


def n_classes(schema: DatasetSchema) -> int:
    return len(schema.classes) if schema.is_classifier else 0


def check_schema(family: str, schema: DatasetSchema) -> None:
    """XGBoost learns label codes 0..k-1; a schema whose codes are other integers cannot be federated as is."""
    if family not in FAMILIES:
        raise ConfigError(f"model {family!r}: federated boosting trains XGBClassifier or XGBRegressor")
    if (family == "XGBClassifier") != schema.is_classifier:
        raise ConfigError(f"model {family} does not fit schema {schema.name!r} (task {schema.task})")
    if schema.is_classifier and list(schema.label_codes) != list(range(len(schema.classes))):
        raise ConfigError(f"model XGBClassifier needs classes 0..{len(schema.classes) - 1}; schema "
                          f"{schema.name!r} has {schema.classes}")


def max_json_bytes(trees: int, depth: int) -> int:
    """Bytes a booster of ``trees`` trees of ``depth`` may take as JSON: about 55-90 bytes a node are measured
    (1.6.2, depths 3-10); 256 a node, 4 kB a tree and 16 kB of the rest leave room for any float's digits."""
    return min(tree_artifact.MAX_XGB_JSON_BYTES, 16384 + trees * (4096 + 256 * (2 ** (depth + 1) - 1)))


def global_limits(schema: DatasetSchema, params: BoostParams, max_trees: int) -> booster_json.Limits:
    """What a global model may hold (an owner's check of what the coordinator sends; the final model)."""
    return booster_json.Limits(schema.n_features, n_classes(schema), max_trees, params.max_depth,
                               max_json_bytes(max_trees, params.max_depth), params.max_abs_leaf)


def reply_limits(schema: DatasetSchema, params: BoostParams, mode: Mode, max_trees: int,
                 global_trees: int = 0) -> booster_json.Limits:
    """What one owner's reply may hold: bagging, exactly its new trees; cyclic, the global model plus them."""
    per_round = max(1, n_classes(schema) if n_classes(schema) > 2 else 1)
    new = params.local_rounds * per_round
    trees = new if mode == "bagging" else global_trees + new
    if trees > max_trees:
        raise ConfigError(f"a reply of {trees} trees would exceed the run's budget of {max_trees} trees")
    return booster_json.Limits(schema.n_features, n_classes(schema), trees, params.max_depth,
                               max_json_bytes(trees, params.max_depth), params.max_abs_leaf, min_trees=trees)


def instruction(mode: Mode, params: BoostParams, max_trees: int) -> dict[str, str | int]:
    """The ConfigRecord entries a ServerApp adds to each train and evaluate message of a boosting run."""
    return {XGB_MODE: mode, XGB_PARAMS: json.dumps(params.to_dict(), sort_keys=True), XGB_MAX_TREES: max_trees}


def read_instruction(config: Any, policy: OwnerTreePolicy | None = None) -> tuple[Mode, BoostParams, int]:
    """An owner's check of a boosting instruction (ConfigError naming the key): mode, parameters, tree budget,
    within the owner's ``policy`` (default: OwnerTreePolicy())."""
    mode, raw, max_trees = config.get(XGB_MODE), config.get(XGB_PARAMS), config.get(XGB_MAX_TREES)
    if mode not in MODES:
        raise ConfigError(f"instruction {XGB_MODE} {str(mode)[:40]!r} is not one of {', '.join(MODES)}")
    if not isinstance(raw, str) or len(raw) > MAX_INSTRUCTION_PARAMS_BYTES:
        raise ConfigError(f"instruction {XGB_PARAMS} must be a JSON string of at most "
                          f"{MAX_INSTRUCTION_PARAMS_BYTES} characters")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ConfigError(f"instruction {XGB_PARAMS} is not JSON") from None
    params = BoostParams.from_mapping(data, f"instruction {XGB_PARAMS}")
    if isinstance(max_trees, bool) or not isinstance(max_trees, int) or not 1 <= max_trees <= tree_artifact.MAX_TREES:
        raise ConfigError(f"instruction {XGB_MAX_TREES} must be an integer in 1..{tree_artifact.MAX_TREES}")
    (policy or OwnerTreePolicy()).check(params, max_trees)
    return mode, params, max_trees


def record_bytes(record: Any, max_bytes: int) -> bytes:
    """A booster's bytes from the ArrayRecord it travels in (one uint8 array '0'), sized before numpy reads it.

    Duck-typed on Flower's ArrayRecord/Array (this module imports no Flower); BoosterRefused names a fault.
    """
    if list(record.keys()) != ["0"]:
        raise booster_json.BoosterRefused("a booster travels as one ArrayRecord with one array '0'")
    array = record["0"]
    if len(array.data) > max_bytes + 256:  # the npy header's few bytes on top of the JSON
        raise booster_json.BoosterRefused(f"{len(array.data)} bytes, above the limit of {max_bytes}")
    if array.stype != "numpy.ndarray" or array.dtype != "uint8" or len(array.shape) != 1:
        raise booster_json.BoosterRefused(f"the booster must be a 1-D uint8 array, got {array.dtype} {array.shape}")
    return array.numpy().tobytes()  # np.load(allow_pickle=False) inside Flower
