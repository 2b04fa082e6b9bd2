"""Aggregation newton: owners' averaged terms reach scikit-learn's pooled optimum; hostile terms are refused.

The strategy rounds run Flower's FedAvg aggregation through the ServerApp's own
RecordingNewton, fed replies built by the owners' own ``local_terms``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from test_fl_contract import Grid, metrics, task_identity  # noqa: F401 - the fixture applies here too

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models, newton
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.aggregation import resolve
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy, make_strategy


def table(name: str) -> tuple[np.ndarray, np.ndarray, DatasetSchema]:
    loader = {"bc": load_breast_cancer, "wine": load_wine, "diabetes": load_diabetes}[name]
    X, y = loader(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    classes = None if name == "diabetes" else sorted({int(v) for v in y})
    schema = DatasetSchema(name=name, n_features=X.shape[1], feature_min=-10.0, feature_max=10.0,
                           **({"task": "regression"} if classes is None else {"classes": classes}))
    return X, y, schema


def label_sorted_owners(y: np.ndarray, owners: int = 3) -> list[np.ndarray]:
    """The worst label skew: each owner holds a block of the rows sorted by label."""
    return np.array_split(np.argsort(y, kind="stable"), owners)


def sklearn_pooled(family: str, X: np.ndarray, y: np.ndarray, schema: DatasetSchema) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = (LogisticRegression(C=1.0, max_iter=10000, tol=1e-12) if family == "LogisticRegression"
             else Ridge(alpha=1.0)).fit(X, y)
    return newton.flatten([m.coef_, np.atleast_1d(m.intercept_)], family, schema)


@pytest.mark.parametrize(("name", "family", "rounds"), [
    ("bc", "LogisticRegression", 8), ("wine", "LogisticRegression", 8), ("diabetes", "Ridge", 1),
])
def test_label_skewed_owners_reach_the_pooled_optimum(name, family, rounds):
    X, y, schema = table(name)
    stepper = newton.Stepper(schema.n_features)
    w = newton.flatten(models.initial_parameters(family, schema), family, schema)
    parts = label_sorted_owners(y)
    strength = newton.penalty_strength(family, {}, len(y))
    for _ in range(rounds):
        terms = [newton.local_terms(family, newton.unflatten(w, family, schema), X[p], y[p], schema) for p in parts]
        share = [len(p) / len(y) for p in parts]
        loss = sum(s * t[0] for s, t in zip(share, terms, strict=True))
        grad = sum(s * t[1] for s, t in zip(share, terms, strict=True))
        hess = sum(s * t[2] for s, t in zip(share, terms, strict=True))
        w = stepper.step(w, loss, grad, hess, strength)
    ref = sklearn_pooled(family, X, y, schema)
    assert np.linalg.norm(w - ref) / np.linalg.norm(ref) < 1e-4


def test_an_overshooting_step_is_halved_back():
    stepper = newton.Stepper(n_features=1)
    w0 = np.zeros(2)
    w1 = stepper.step(w0, 1.0, np.array([-1.0, 0.0]), np.eye(2), 0.0)
    assert np.allclose(w1, [1.0, 0.0])
    w2 = stepper.step(w1, 5.0, np.array([3.0, 0.0]), np.eye(2), 0.0)  # the objective rose: back half way
    assert np.allclose(w2, [0.5, 0.0]) and stepper.log[-1]["accepted"] is False


def _replies(sent: dict[int, Message], X, y, parts, family, schema, start) -> list[Message]:
    out = []
    for node, rows in zip(sorted(sent)[:len(parts)], parts, strict=True):
        loss, grad, hess = newton.local_terms(family, start, X[rows], y[rows], schema)
        scores = metrics(**{"num-examples": len(rows)})
        if not schema.is_classifier:
            scores["eval-r2"] = scores.pop("eval-accuracy")
        content = RecordDict({"arrays": to_arrays(fc.pack_newton(loss, grad, hess)),
                              "metrics": MetricRecord(scores)})
        out.append(Message(content, reply_to=sent[node]))
    return out


def newton_round(tmp_path, hostile: RecordDict | None, weight: int | None = None, name: str = "bc"):
    X, y, schema = table(name)
    family = "LogisticRegression" if name == "bc" else "Ridge"
    nodes = [1, 2, 3, 4, 5]
    keys = {fc.owner_key_id(f"key-{n}".encode()): f"owner-{n}" for n in nodes}
    cap = 10**7 if weight else 1000
    s = make_strategy("newton", tmp_path / "progress.jsonl", ReplyPolicy(family, schema, cap, newton_terms=True),
                      owner_keys=keys, node_wait=1.0, min_nodes=4)
    grid = Grid(nodes)
    start = models.initial_parameters(family, schema)
    sent = {m.metadata.dst_node_id: m for m in grid.push(s.configure_train(1, to_arrays(start), ConfigRecord({}),
                                                                            grid))}
    parts = label_sorted_owners(y, 4)
    replies = _replies(sent, X, y, parts, family, schema, start)
    if hostile is not None:
        if weight:
            hostile[fc.METRICS] = MetricRecord(metrics(**{"num-examples": weight}))
        replies.append(Message(hostile, reply_to=sent[5]))
    arrays, _ = s.aggregate_train(1, replies)
    s.flush(1)
    row = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[0])
    # The honest step: the four owners' row-weighted terms plus the pooled penalty, solved.
    honest = newton.Stepper(schema.n_features)
    terms = [newton.local_terms(family, start, X[p], y[p], schema) for p in parts]
    share = [len(p) / len(y) for p in parts]
    expected = honest.step(newton.flatten(start, family, schema), *(sum(s * t[i] for s, t in zip(share, terms,
                                                                                                  strict=True))
                                                                    for i in range(3)),
                           newton.penalty_strength(family, {}, len(y)))
    got = newton.flatten(arrays.to_numpy_ndarrays(), family, schema)
    return got, expected, row


@pytest.mark.parametrize(("name", "rows"), [("bc", 569), ("diabetes", 442)])
def test_a_round_steps_on_the_honest_owners_terms(tmp_path, name, rows):
    """A classifier's and a regressor's (a scalar intercept, one value on the wire) round through the strategy."""
    got, expected, row = newton_round(tmp_path, None, name=name)
    assert np.allclose(got, expected, atol=1e-9) and np.abs(got).max() > 0.1
    assert row["fit_rows"] == rows and row["newton"]["accepted"] is True and row["failures"] == []


P = 31  # breast cancer, binary: 30 coefficients and an intercept


def terms_record(grad: np.ndarray, upper: np.ndarray, loss: float) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord([grad, upper, np.array([loss])]),
                       "metrics": MetricRecord(metrics())})


@pytest.mark.parametrize(("hostile", "reason"), [
    (terms_record(np.zeros(P), np.full(P * (P + 1) // 2, np.nan), 0.5), "hessian has non-finite values"),
    (terms_record(np.zeros(P), -np.ones(P * (P + 1) // 2), 0.5), "not a convex loss's"),
    (terms_record(np.zeros(P), np.zeros(P * (P + 1) // 2), -1.0), "a negative loss"),
    # int64's minimum: np.abs leaves it negative, so a bound checked on integers would let it through
    (terms_record(np.full(P, np.iinfo(np.int64).min), np.zeros(P * (P + 1) // 2, dtype=np.int64), 0.5),
     "gradient has values beyond"),
    (terms_record(np.zeros(P), np.zeros(P * P), 0.5), f"hessian has shape ({P * P},)"),
    (RecordDict({"arrays": to_arrays(models.initial_parameters("LogisticRegression", table("bc")[2])),
                 "metrics": MetricRecord(metrics())}), "expected 3 arrays (gradient, hessian, loss), got 2"),
], ids=["nan", "negative-diagonal", "negative-loss", "int64-min", "full-square", "parameters-not-terms"])
def test_hostile_terms_are_their_owners_failure(tmp_path, hostile, reason):
    got, expected, row = newton_round(tmp_path, hostile)
    assert np.allclose(got, expected, atol=1e-9)
    (failure,) = row["failures"]
    assert failure["owner"] == "owner-5" and reason in failure["reason"]


def test_an_indefinite_hessian_with_a_positive_diagonal_is_its_owners_failure(tmp_path):
    """Each diagonal entry passes, but the matrix could cancel the others' curvature: every reply's
    eigenvalues are checked, so the owner is named and the step is the honest owners'."""
    upper = np.zeros((P, P))
    upper[0, 1] = 1e6  # a positive diagonal, an off-diagonal no Gram matrix of these rows can have
    np.fill_diagonal(upper, 1.0)
    hostile = terms_record(np.zeros(P), upper[np.triu_indices(P)], 0.5)
    got, expected, row = newton_round(tmp_path, hostile)
    assert np.allclose(got, expected, atol=1e-9)
    (failure,) = row["failures"]
    assert failure["owner"] == "owner-5" and "negative eigenvalue" in failure["reason"]


def test_a_step_beyond_the_contract_is_dropped_and_the_model_stays(tmp_path):
    """A convex but nearly flat Hessian with a large gradient: the step would leave every parameter bound."""
    hostile = terms_record(np.full(P, -1e9), np.zeros(P * (P + 1) // 2), 0.5)
    X, y, schema = table("bc")
    stepper = newton.Stepper(schema.n_features)
    w = np.zeros(P)
    stepped = stepper.step(w, 0.5, np.full(P, -1e9), np.zeros((P, P)), 1e-6)
    assert np.max(np.abs(stepped)) > fc.MAX_ABS_PARAM  # what the strategy must not let through
    got, _, row = newton_round(tmp_path, hostile, weight=10**6)
    assert np.allclose(got, 0.0)
    assert any(f["owner"] == "(average)" and "beyond" in f["reason"] for f in row["failures"])


def test_auto_picks_newton_where_it_applies_and_says_why_elsewhere():
    bc = table("bc")[2]
    assert resolve("auto", "LogisticRegression", bc, False, 0.0)[0] == "newton"
    used, why = resolve("auto", "LogisticRegression", resolve_schema("digits"), False, 0.0)
    assert used == "fedavg" and "650 parameters" in why
    assert resolve("auto", "LinearSVC", bc, False, 0.0)[0] == "fedavg"
    assert resolve("auto", "LogisticRegression", bc, True, 0.0)[0] == "newton"  # through SecAgg+, scaled
    assert resolve("auto", "LogisticRegression", bc, True, 0.0, dp=True)[0] == "fedavg"
    diabetes = table("diabetes")[2]
    assert resolve("auto", "Ridge", diabetes, False, 0.0)[0] == "newton"
    with pytest.raises(ConfigError, match="declare target_min and target_max"):  # SecAgg+ would clip it
        resolve("auto", "Ridge", diabetes, True, 0.0)
    assert resolve("auto", "Ridge", resolve_schema("diabetes"), True, 0.0)[0] == "newton"  # bounds declared
    assert resolve("auto", "Lasso", resolve_schema("diabetes"), True, 0.0)[0] == "fedavg"  # secure_target
    assert resolve("krum", "LogisticRegression", bc, False, 0.0) == ("krum", "as configured")


@pytest.mark.parametrize(("family", "schema", "secure", "clip", "message"), [
    ("LogisticRegression", "digits", False, 0.0, "above newton's 400"),
    ("LinearSVC", "bc", False, 0.0, "trains LogisticRegression, Ridge, LinearRegression, not LinearSVC"),
    ("Ridge", "diabetes", True, 0.0, "declare target_min and target_max"),
    ("LogisticRegression", "bc", False, 1.0, "clip_norm"),
])
def test_newton_where_it_cannot_train_is_refused_naming_why(family, schema, secure, clip, message):
    resolved = resolve_schema("digits") if schema == "digits" else table(schema)[2]
    with pytest.raises(ConfigError, match=message):
        resolve("newton", family, resolved, secure, clip)


@pytest.mark.parametrize(("name", "family"), [("bc", "LogisticRegression"), ("wine", "LogisticRegression")])
def test_scaled_and_quantised_as_secagg_does_the_steps_still_reach_the_optimum(name, family):
    """secure_training.NewtonRun with each owner's scaled terms quantised by Flower's own SecAgg+ quantiser."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    from fedfhe_coordinator.serverapp.secure_training import NewtonRun

    X, y, schema = table(name)
    clip, qrange, max_weight = 8.0, 2**22, 10000.0
    run = NewtonRun(family, schema, {}, float(np.max(np.abs(X))))
    params = models.initial_parameters(family, schema)
    parts = label_sorted_owners(y)
    for r in range(1, 9):
        scales = run.round_scales(r, params, clip)
        total, ratios = None, 0.0
        for p in parts:
            terms = fc.pack_newton(*newton.local_terms(family, params, X[p], y[p], schema))
            scaled = [np.clip(t * s, -clip, clip) * (len(p) / max_weight) for t, s in zip(terms, scales, strict=True)]
            back = dequantize(quantize(scaled, clip, qrange), clip, qrange)
            total = back if total is None else [a + b for a, b in zip(total, back, strict=True)]
            ratios += len(p) / max_weight
        averaged = [t / ratios for t in total]
        quantum = 2.0 * clip / qrange * len(parts) / ratios
        wire = run.step(r, params, averaged, len(y), quantum)
        params = [wire[0].reshape(params[0].shape), wire[1].reshape(params[1].shape)]
    # Rounding limits the optimum's precision in its flattest directions (each owner's terms travel multiplied
    # by rows / max_weight, here about 0.02: 50x coarser steps); the predictions are the pooled model's.
    ref = sklearn_pooled(family, X, y, schema)
    assert np.linalg.norm(newton.flatten(params, family, schema) - ref) / np.linalg.norm(ref) < 0.1
    ours = models.set_parameters(models.build(family), params, schema)
    pooled = models.set_parameters(models.build(family), newton.unflatten(ref, family, schema), schema)
    assert np.array_equal(ours.predict(X), pooled.predict(X))
    assert np.max(np.abs(ours.predict_proba(X) - pooled.predict_proba(X))) < 0.05


@pytest.mark.parametrize(("family", "params", "message"), [
    ("LogisticRegression", {"penalty": "l1", "solver": "saga"}, "penalty"),
    ("LogisticRegression", {"class_weight": "balanced"}, "class_weight"),
    ("LogisticRegression", {"solver": "liblinear"}, "solver"),
    ("LogisticRegression", {"fit_intercept": False}, "fit_intercept"),
    ("LogisticRegression", {"C": 0}, "C: 0: must be a finite number > 0"),
    ("Ridge", {"positive": True}, "positive"),
])
def test_estimator_parameters_newton_would_not_reproduce_keep_auto_on_fedavg(family, params, message):
    schema = table("bc" if family == "LogisticRegression" else "diabetes")[2]
    used, why = resolve("auto", family, schema, False, 0.0, model_params=params)
    assert used == "fedavg" and message in why
    with pytest.raises(ConfigError, match=message):
        resolve("newton", family, schema, False, 0.0, model_params=params)
    assert resolve("auto", family, schema, False, 0.0, model_params={"max_iter": 50})[0] == "newton"
