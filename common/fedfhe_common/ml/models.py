"""Supported model families: the linear ones (federated, FedAvg of coef_/intercept_) and the tree ones.

The original demo promised "simply change the model class": each linear family
aggregates by FedAvg of coef_/intercept_ and converts to Concrete ML. Trees and
forests have no parameters to average, so they train only on the local path
(``train-local``); XGBoost federates through Flower's FedXgb strategies
(``fedfhe_common.ml.fedxgb``); ``fedfhe_common.contracts.tree_artifact`` holds every tree model.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.runtime.errors import ConfigError

CLASSIFIERS = ("LogisticRegression", "LinearSVC", "SGDClassifier")
REGRESSORS = ("LinearRegression", "Ridge", "Lasso", "ElasticNet")
FAMILIES = CLASSIFIERS + REGRESSORS  # the federated (linear) families
TREE_CLASSIFIERS = ("DecisionTreeClassifier", "RandomForestClassifier", "XGBClassifier")
TREE_REGRESSORS = ("DecisionTreeRegressor", "RandomForestRegressor", "XGBRegressor")
TREE_FAMILIES = TREE_CLASSIFIERS + TREE_REGRESSORS
LOCAL_FAMILIES = FAMILIES + TREE_FAMILIES  # what train-local and compile accept
# Boosted trees federate through Flower's FedXgbBagging / FedXgbCyclic (fedfhe_common.ml.fedxgb), not FedAvg.
FEDERATED_TREES = ("XGBClassifier", "XGBRegressor")
# Concrete ML's default for trees (6 bits on inputs and leaves); linear models keep 8 on pixels and take 10 on
# typed tables: a linear circuit has no bootstrapping, so 2 more bits cost nothing measurable (breast cancer
# 12.0 -> 9.2 ms/row, diabetes 4.9 -> 5.9, wine 5.7 -> 5.7; keys 11 -> 13 kB), and at 8 the standardised
# columns' rounding flipped a breast-cancer row (-0.88 points) and cost the diabetes table 0.27 points of R²
# that 10 bits give back (bench/results/tabular.json, newton-8-rounds).
DEFAULT_N_BITS = {"linear": 8, "typed-linear": 10, "tree": 6}


def is_tree(family: str) -> bool:
    return family in TREE_FAMILIES


def default_n_bits(family: str, schema: DatasetSchema | None = None) -> int:
    if is_tree(family):
        return DEFAULT_N_BITS["tree"]
    return DEFAULT_N_BITS["typed-linear" if schema is not None and schema.typed else "linear"]


def _class(family: str) -> type:
    if family == "LinearSVC":
        from sklearn import svm  # lazy: scikit-learn takes ~2 s to import

        return svm.LinearSVC
    if family in ("DecisionTreeClassifier", "DecisionTreeRegressor"):
        from sklearn import tree  # lazy: scikit-learn takes ~2 s to import

        return getattr(tree, family)
    if family in ("RandomForestClassifier", "RandomForestRegressor"):
        from sklearn import ensemble  # lazy: scikit-learn takes ~2 s to import

        return getattr(ensemble, family)
    if family in ("XGBClassifier", "XGBRegressor"):
        import xgboost  # lazy: xgboost takes ~4 s to import

        return getattr(xgboost, family)
    if family not in FAMILIES:
        raise ConfigError(f"model {family!r}: unknown family (supported: {', '.join(LOCAL_FAMILIES)})")
    from sklearn import linear_model  # lazy: scikit-learn takes ~2 s to import

    return getattr(linear_model, family)


def default_params(family: str) -> dict[str, Any]:
    """Local-fit settings that suit a few epochs per round with warm start."""
    return {
        "LogisticRegression": {"max_iter": 20, "warm_start": True, "C": 1.0},
        "LinearSVC": {"max_iter": 200, "dual": "auto"},
        "SGDClassifier": {"loss": "log_loss", "max_iter": 5, "tol": None, "warm_start": True, "alpha": 1e-4},
        "LinearRegression": {},
        "Ridge": {"alpha": 1.0},
        "Lasso": {"alpha": 0.01, "max_iter": 200, "warm_start": True},
        "ElasticNet": {"alpha": 0.01, "max_iter": 200, "warm_start": True},
        # Trees: Concrete ML's own defaults for depth and size; an FHE tree costs per node and per tree.
        "DecisionTreeClassifier": {"max_depth": 6, "random_state": 0},
        "DecisionTreeRegressor": {"max_depth": 6, "random_state": 0},
        "RandomForestClassifier": {"n_estimators": 20, "max_depth": 4, "random_state": 0, "n_jobs": 1},
        "RandomForestRegressor": {"n_estimators": 20, "max_depth": 4, "random_state": 0, "n_jobs": 1},
        "XGBClassifier": {"n_estimators": 20, "max_depth": 3, "random_state": 0, "n_jobs": 1},
        "XGBRegressor": {"n_estimators": 20, "max_depth": 3, "random_state": 0, "n_jobs": 1},
    }[family]


# scikit-learn's penalty does not grow with the rows while these families' losses sum over them: fitted with
# the pooled setting, an owner holding 1/K of the rows regularises K times harder than the pooled fit (with 10
# owners, LogisticRegression's C 1 acts like C 0.1: -5.5 points on breast-cancer, bench/results/tabular.json).
# Lasso, ElasticNet and SGDClassifier average their loss over the rows, so their alpha already matches.
# Ridge sums too, but each owner solves it exactly (closed form) and FedAvg averages those solutions once: with
# alpha x n_k / N each owner's solution overfits its few rows and the average is worse (diabetes-table, 10 IID
# owners: R² ratio 0.954 -> 0.909), so Ridge keeps the pooled alpha; its share would need X'X and X'y summed.
SUM_LOSS_C = ("LogisticRegression", "LinearSVC")
SUM_LOSS_ALPHA: tuple[str, ...] = ()


def owner_params(family: str, params: dict[str, Any], rows: int, federation_rows: int) -> dict[str, Any]:
    """The run's parameters for an owner holding ``rows`` of ``federation_rows``: its share of the penalty.

    With C_k = C N / n_k the owners' objectives, weighted by n_k / N as FedAvg weighs their updates, add up
    to the pooled objective: the federation's optimum is the centralised one (for the iterative families;
    see SUM_LOSS_ALPHA for Ridge).
    """
    if not 0 < rows <= federation_rows:
        raise ConfigError(f"federation-rows {federation_rows} must be at least this owner's {rows} training rows")
    merged = {**default_params(family), **params}
    if family in SUM_LOSS_C:
        return merged | {"C": float(merged.get("C", 1.0)) * federation_rows / rows}
    if family in SUM_LOSS_ALPHA:
        return merged | {"alpha": float(merged.get("alpha", 1.0)) * rows / federation_rows}
    return merged


def check_family(family: str, schema: DatasetSchema, *, local: bool = False) -> None:
    """Refuse a family that cannot learn the schema's task, naming the ones that can (a pre-flight check).

    ``local``: the caller trains on one site (train-local, compile), where every tree family fits;
    federated training takes the linear families (FedAvg) and XGBoost (Flower's FedXgb strategies):
    a single tree or a forest has no federated learner here.
    """
    _class(family)
    federated = (CLASSIFIERS + ("XGBClassifier",)) if schema.is_classifier else (REGRESSORS + ("XGBRegressor",))
    if is_tree(family) and family not in FEDERATED_TREES and not local:
        raise ConfigError(f"model {family!r} is a tree family with no federated learner (FedAvg averages linear "
                          f"parameters, Flower's FedXgb strategies combine boosted trees), so it trains on one "
                          f"site with `fedfhe-coordinator train-local`; federated families for schema "
                          f"{schema.name!r} (task {schema.task}): {', '.join(federated)}")
    if schema.is_classifier != (family in CLASSIFIERS + TREE_CLASSIFIERS):
        kind = "classifier" if schema.is_classifier else "regressor"
        fit = federated
        if local:
            fit = (CLASSIFIERS + TREE_CLASSIFIERS) if schema.is_classifier else (REGRESSORS + TREE_REGRESSORS)
        raise ConfigError(f"model {family!r} does not fit schema {schema.name!r} (task {schema.task}), which needs "
                          f"a {kind}: {', '.join(fit)}")


def build(family: str, params: dict[str, Any] | None = None) -> Any:
    """A fresh estimator of ``family`` with fedfhe's defaults overridden by ``params``."""
    cls = _class(family)
    merged = {**default_params(family), **(params or {})}
    try:
        model = cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"model {family}: bad parameter: {exc}") from None
    # scikit-learn's own checks (else only at fit time, as a traceback); XGBoost has no constraints table.
    validate = getattr(model, "_validate_params", None) if hasattr(model, "_parameter_constraints") else None
    if validate is not None:
        try:
            validate()
        except (ValueError, TypeError) as exc:  # InvalidParameterError is both
            raise ConfigError(f"model {family}: bad parameter: {' '.join(str(exc).split())}") from None
    else:  # XGBoost takes any name (**kwargs), warns at fit time and trains without it: refuse a typo here
        unknown = sorted(set(params or {}) - set(cls().get_params()))
        if unknown:
            raise ConfigError(f"model {family}: unknown parameter {', '.join(map(repr, unknown))} (its scikit-learn "
                              f"parameters: {', '.join(sorted(cls().get_params()))})")
    return model


def check_params(family: str, params: dict[str, Any] | None, where: str) -> None:
    """Refuse a bad estimator parameter naming where it was given (``--model-params``, ``training.model_params``),
    before any data is read or any process started: the fit would fail later, as a traceback."""
    _class(family)  # an unknown family is the family's error, not the parameters'
    try:
        build(family, params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def param_shapes(family: str, schema: DatasetSchema) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of coef_ and intercept_ (binary classifiers keep one row, as sklearn does)."""
    if family in REGRESSORS:
        return (schema.n_features,), ()
    rows = 1 if len(schema.classes) == 2 else len(schema.classes)
    return (rows, schema.n_features), (rows,)


def initial_parameters(family: str, schema: DatasetSchema) -> list[np.ndarray]:
    """Zeros: the common starting point every owner warm-starts from."""
    coef_shape, icpt_shape = param_shapes(family, schema)
    return [np.zeros(coef_shape), np.zeros(icpt_shape)]


def set_parameters(model: Any, params: list[np.ndarray], schema: DatasetSchema) -> Any:
    """Install global parameters so ``predict`` works without a local fit."""
    model.coef_ = np.array(params[0], dtype=np.float64)
    icpt = np.array(params[1], dtype=np.float64)
    model.intercept_ = icpt if icpt.ndim else float(icpt)
    model.n_features_in_ = schema.n_features
    if schema.is_classifier:
        model.classes_ = np.asarray(schema.label_codes)
    return model


def get_parameters(model: Any, family: str, schema: DatasetSchema) -> list[np.ndarray]:
    coef_shape, icpt_shape = param_shapes(family, schema)
    coef = np.asarray(model.coef_, dtype=np.float64).reshape(coef_shape)
    icpt = np.asarray(model.intercept_, dtype=np.float64).reshape(icpt_shape)
    return [coef, icpt]


def local_fit(model: Any, family: str, X: np.ndarray, y: np.ndarray, schema: DatasetSchema,
              keep_missing: bool = False) -> Any:
    """Fit on an owner's rows, starting from the parameters already installed.

    sklearn only warm-starts from coef_ when every class is present, so a
    non-IID owner missing classes is fitted with SGD-style partial_fit when the
    family supports it, and otherwise with its rows plus class ids that carry no weight.
    ``keep_missing`` (a federated round): an owner with rows of at least three classes
    fits only those, and the classes it has no rows of keep the incoming global parameters.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: few iterations per round is the point
        if not schema.is_classifier:
            model.fit(X, y)
            return model
        classes = np.asarray(schema.label_codes)
        if hasattr(model, "partial_fit"):
            for _ in range(int(getattr(model, "max_iter", 1) or 1)):
                model.partial_fit(X, y, classes=classes)
            return model
        missing = np.setdiff1d(classes, np.unique(y))
        present = np.setdiff1d(classes, missing)
        if missing.size and keep_missing and present.size >= 3 and np.shape(model.coef_)[0] == classes.size:
            return _fit_present_classes(model, X, y, classes, present)
        if missing.size:
            # Zero-weight placeholder rows keep every class in the problem so
            # coef_ keeps its global shape and the warm start applies.
            X = np.vstack([X, np.zeros((missing.size, X.shape[1]))])
            y = np.concatenate([y, missing])
            weight = np.concatenate([np.ones(len(y) - missing.size), np.full(missing.size, 1e-9)])
            model.fit(X, y, sample_weight=weight)
        else:
            model.fit(X, y)
        return model


def _fit_present_classes(model: Any, X: np.ndarray, y: np.ndarray, classes: np.ndarray, present: np.ndarray) -> Any:
    """Fit the rows of coef_/intercept_ of the classes this owner has rows of; the others stay as received.

    A softmax fitted with a class that has no rows drives that class's score down on
    every row, and averaging owners under label skew then pulls the global model away
    from each class some owners lack (fashion-mnist, 10 owners, Dirichlet(0.5): the
    federated model oscillated at 0.72-0.78 against 0.85 centralised). Restricting the
    local softmax to the present classes is FedRS's remedy (Li and Zhan, KDD 2021);
    bench/results/federated.json ``strategies`` has the measured effect.
    """
    rows = np.array([int(np.flatnonzero(classes == c)[0]) for c in present])
    coef, icpt = np.array(model.coef_, dtype=np.float64), np.array(model.intercept_, dtype=np.float64)
    model.coef_, model.intercept_ = coef[rows].copy(), icpt[rows].copy()  # the warm start of these classes
    model.fit(X, y)
    coef[rows], icpt[rows] = model.coef_, model.intercept_
    model.coef_, model.intercept_, model.classes_ = coef, icpt, classes
    return model
