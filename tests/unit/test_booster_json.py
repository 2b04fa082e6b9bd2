"""A booster JSON that crossed a host is checked with json alone, within limits, before XGBoost or Flower read it;
and xgboost 1.6.2's JSON, with the iteration_indptr booster_json adds, is what Flower's bagging aggregation needs:
its result loads into 1.6.2 and predicts the sum of the trees it was built from."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import xgboost as xgb
from flwr.serverapp.strategy.strategy_utils import aggregate_bagging
from sklearn.datasets import load_breast_cancer, load_wine

from fedfhe_common.contracts import booster_json
from fedfhe_common.contracts.booster_json import BoosterRefused, Limits

BC_X, BC_Y = load_breast_cancer(return_X_y=True)
WINE_X, WINE_Y = load_wine(return_X_y=True)


def train(X: np.ndarray, y: np.ndarray, objective: str, rounds: int = 2, depth: int = 2, seed: int = 0,
          base: bytes | None = None) -> bytes:
    """1.6.2's JSON of ``rounds`` new boosting rounds (on ``base`` when given), as an owner makes them."""
    params = {"objective": objective, "max_depth": depth, "eta": 0.3, "base_score": 0.5, "nthread": 1, "seed": seed,
              "subsample": 0.8}
    if objective == "multi:softprob":
        params["num_class"] = 3
    start = None
    if base is not None:
        start = xgb.Booster(params=params)
        start.load_model(bytearray(base))
    bst = xgb.train(params, xgb.DMatrix(X, label=y), rounds, xgb_model=start)
    n = bst.num_boosted_rounds()
    return bytes(bst[n - rounds:n].save_raw("json"))


def margins(raw: bytes, X: np.ndarray) -> np.ndarray:
    bst = xgb.Booster()
    bst.load_model(bytearray(raw))
    return bst.predict(xgb.DMatrix(X), output_margin=True)


BINARY = Limits(n_features=30, n_classes=2, max_trees=4, max_depth=2)
MULTI = Limits(n_features=13, n_classes=3, max_trees=6, max_depth=2)


@pytest.fixture(scope="module")
def binary_raw() -> bytes:
    return train(BC_X, BC_Y, "binary:logistic")


@pytest.fixture(scope="module")
def multi_raw() -> bytes:
    return train(WINE_X, WINE_Y, "multi:softprob")


def edited(raw: bytes, edit: Callable[[dict], object]) -> bytes:
    doc = json.loads(raw)
    edit(doc)
    return json.dumps(doc).encode()


def model(doc: dict) -> dict:
    return doc["learner"]["gradient_booster"]["model"]


def test_a_good_booster_passes_and_keeps_its_predictions(binary_raw):
    booster = booster_json.parse(binary_raw, BINARY)
    assert (booster.n_trees, booster.rounds, booster.max_depth) == (2, 2, 2)
    np.testing.assert_array_equal(margins(booster.to_bytes(indptr=False), BC_X), margins(binary_raw, BC_X))
    plain = json.loads(binary_raw)
    assert plain["learner"]["attributes"] == {"best_ntree_limit": "2"}  # dropped: predict would use only those
    plain["learner"]["attributes"] = {}
    assert booster.to_bytes(indptr=False) == json.dumps(plain, separators=(",", ":")).encode()


def inner_child(doc: dict) -> int:
    return model(doc)["trees"][0]["left_children"][0]


HOSTILE: dict[str, tuple[Callable[[dict], object], str]] = {
    "a feature index out of range": (lambda d: model(d)["trees"][0]["split_indices"].__setitem__(0, 30),
                                     r"tree 0: node 0 splits on feature id 30, not below n_features 30"),
    "a cycle": (lambda d: model(d)["trees"][0]["left_children"].__setitem__(inner_child(d), inner_child(d)),
                r"tree 0: node \d+ is reached twice from the root \(a cycle or a shared node\)"),
    "a child out of range": (lambda d: model(d)["trees"][1]["right_children"].__setitem__(0, 99),
                             r"tree 1: node 0's right child index 99 is out of range"),
    "a huge leaf": (lambda d: model(d)["trees"][1]["split_conditions"].__setitem__(-1, 1e9),
                    r"tree 1: a leaf value above 10000 in magnitude"),
    "another objective": (lambda d: d["learner"]["objective"].__setitem__("name", "reg:pseudohubererror"),
                          r"objective 'reg:pseudohubererror' is not 'binary:logistic'"),
    "a learned intercept": (lambda d: d["learner"]["learner_model_param"].__setitem__("base_score", "4.2E-1"),
                            r"base_score '4.2E-1' is not the fixed 0.5"),
    "a wrong num_feature": (lambda d: d["learner"]["learner_model_param"].__setitem__("num_feature", "31"),
                            r"num_feature 31 is not the schema's 30"),
    "a sklearn attribute": (lambda d: d["learner"]["attributes"].__setitem__("scikit_learn", "{}"),
                            r"learner.attributes may hold only"),
    "a miscounted model": (lambda d: model(d)["gbtree_model_param"].__setitem__("num_trees", "3"),
                           r"num_trees 3 differs from the 2 trees listed"),
    "parallel trees": (lambda d: model(d)["gbtree_model_param"].__setitem__("num_parallel_tree", "2"),
                       r"parallel trees"),
    "a renumbered tree": (lambda d: model(d)["trees"][1].__setitem__("id", 0), r"tree 1: id 0 is not its position"),
    "an extra field": (lambda d: model(d).__setitem__("payload", "x"), r"unexpected fields \['payload'\]"),
    "a wrong indptr": (lambda d: model(d).__setitem__("iteration_indptr", [0, 2]),
                       r"iteration_indptr does not mark rounds of 1 trees"),
    "a string leaf": (lambda d: model(d)["trees"][0]["base_weights"].__setitem__(0, "1"),
                      r"tree 0.base_weights must list \d+ numbers"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_binary_booster_is_refused_with_its_reason(binary_raw, case):
    edit, reason = HOSTILE[case]
    with pytest.raises(BoosterRefused, match=reason):
        booster_json.parse(edited(binary_raw, edit), BINARY)


def test_too_many_trees_or_too_deep_is_refused():
    three = train(BC_X, BC_Y, "binary:logistic", rounds=3)
    with pytest.raises(BoosterRefused, match=r"^3 trees, not within 1..2$"):
        booster_json.parse(three, Limits(n_features=30, n_classes=2, max_trees=2, max_depth=2))
    deep = train(BC_X, BC_Y, "binary:logistic", rounds=1, depth=4)
    with pytest.raises(BoosterRefused, match=r"tree 0: deeper than 2 levels"):
        booster_json.parse(deep, BINARY)
    booster_json.parse(deep, Limits(n_features=30, n_classes=2, max_trees=4, max_depth=4))


def test_bytes_are_limited_before_json_reads_them(binary_raw):
    small = Limits(n_features=30, n_classes=2, max_trees=4, max_depth=2, max_bytes=len(binary_raw) - 1)
    with pytest.raises(BoosterRefused, match=rf"^{len(binary_raw)} bytes, above the limit of {len(binary_raw) - 1}$"):
        booster_json.parse(binary_raw, small)
    with pytest.raises(BoosterRefused, match=r"not JSON"):
        booster_json.parse(b"[" * 200_000 + b"]" * 200_000, Limits(30, 2, 4, 2, max_bytes=1 << 20))
    with pytest.raises(BoosterRefused, match=r"not JSON"):
        booster_json.parse(b"\xff\xfe{}", BINARY)
    with pytest.raises(BoosterRefused, match=r"must be bytes, got str"):
        booster_json.parse(binary_raw.decode(), BINARY)  # type: ignore[arg-type]


def test_nan_literals_and_repeated_keys_are_refused(binary_raw):
    text = binary_raw.decode()
    nan = text.replace('"split_conditions":[', '"split_conditions":[NaN,', 1)
    with pytest.raises(BoosterRefused, match=r"the JSON holds NaN, which is not a number"):
        booster_json.parse(nan.encode(), BINARY)
    twice = text.replace('{"learner":', '{"version":[1,6,2],"learner":', 1)
    with pytest.raises(BoosterRefused, match=r"a JSON object repeats a key"):
        booster_json.parse(twice.encode(), BINARY)
    doc = json.loads(text)
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["split_conditions"][-1] = 12345.5
    infinite = json.dumps(doc).replace("12345.5", "1e999", 1)  # json reads 1e999 as inf
    with pytest.raises(BoosterRefused, match=r"tree 0.split_conditions holds NaN or infinite values"):
        booster_json.parse(infinite.encode(), BINARY)


def test_a_hostile_multiclass_booster_is_refused(multi_raw):
    assert booster_json.parse(multi_raw, MULTI).rounds == 2
    wrong_class = edited(multi_raw, lambda d: d["learner"]["learner_model_param"].__setitem__("num_class", "4"))
    with pytest.raises(BoosterRefused, match=r"num_class 4 is not 3"):
        booster_json.parse(wrong_class, MULTI)
    with pytest.raises(BoosterRefused, match=r"objective 'binary:logistic' is not 'multi:softprob'"):
        booster_json.parse(train(WINE_X, WINE_Y > 0, "binary:logistic"), MULTI)
    no_class = edited(multi_raw, lambda d: d["learner"]["learner_model_param"].__setitem__("num_class", "0"))
    with pytest.raises(BoosterRefused, match=r"num_class 0 is not 3"):
        booster_json.parse(no_class, MULTI)
    # Concrete ML reads tree i as class i % 3: a booster whose trees are in another class order is refused.
    swapped = edited(multi_raw, lambda d: model(d)["tree_info"].__setitem__(slice(0, 2), [1, 0]))
    with pytest.raises(BoosterRefused, match=r"tree_info is not one tree per class per round"):
        booster_json.parse(swapped, MULTI)
    five = edited(multi_raw, lambda d: (model(d)["trees"].pop(), model(d)["tree_info"].pop(),
                                        model(d)["gbtree_model_param"].__setitem__("num_trees", "5")))
    with pytest.raises(BoosterRefused, match=r"5 trees are not whole rounds of 3"):
        booster_json.parse(five, MULTI)


def test_flower_bagging_needs_iteration_indptr_which_booster_json_adds():
    """Flower's aggregate_bagging fails on 1.6.2's own JSON; with to_bytes' indptr its result is a booster
    1.6.2 loads, and its margins are the sum of the replies' margins (base_score 0.5 is logit 0)."""
    replies = [train(BC_X[i::3], BC_Y[i::3], "binary:logistic", rounds=1, seed=i) for i in range(3)]
    with pytest.raises(KeyError, match="iteration_indptr"):
        aggregate_bagging(replies[0], replies[1])
    ready = [booster_json.parse(r, BINARY).to_bytes() for r in replies]
    flower = b""
    for r in ready:
        flower = aggregate_bagging(flower, r)
    limits = Limits(n_features=30, n_classes=2, max_trees=3, max_depth=2)
    checked = booster_json.parse(flower, limits)  # Flower's result passes the owners' check of a global model
    total = sum(margins(r, BC_X) for r in replies)
    np.testing.assert_allclose(margins(flower, BC_X), total, rtol=1e-5, atol=1e-5)
    ours = None
    for r in ready:
        ours = booster_json.append_trees(ours, booster_json.parse(r, BINARY))
    assert ours is not None and ours.doc == checked.doc  # same aggregation as Flower's where Flower's is right
    assert json.loads(ours.to_bytes())["learner"]["gradient_booster"]["model"]["iteration_indptr"] == [0, 1, 2, 3]


def test_multiclass_bagging_keeps_each_trees_class():
    """Flower's aggregate_bagging appends num_parallel_tree (1) tree per reply with class 0: a 3-class reply
    loses two of its three trees and the result is refused. append_trees keeps all, in class order."""
    replies = [train(WINE_X[i::3], WINE_Y[i::3], "multi:softprob", rounds=1, seed=i) for i in range(3)]
    parsed = [booster_json.parse(r, Limits(13, 3, 3, 2)) for r in replies]
    flower = b""
    for p in parsed:
        flower = aggregate_bagging(flower, p.to_bytes())
    with pytest.raises(BoosterRefused, match=r"5 trees are not whole rounds of 3"):
        booster_json.parse(flower, Limits(13, 3, 9, 2))
    ours = None
    for p in parsed:
        ours = booster_json.append_trees(ours, p)
    assert ours is not None and ours.n_trees == 9 and ours.rounds == 3
    raw = ours.to_bytes()
    assert booster_json.parse(raw, Limits(13, 3, 9, 2)).doc == ours.doc
    # 1.6.2 loads it (iteration_indptr and all); its margins are the sums of the replies' (base_score 0.5 each).
    total = sum(margins(r, WINE_X) - 0.5 for r in replies) + 0.5
    np.testing.assert_allclose(margins(raw, WINE_X), total, rtol=1e-5, atol=1e-5)


def test_regressor_bagging_adds_the_trees_to_one_base_score():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    replies = [train(X[i::3], y[i::3], "reg:squarederror", rounds=2, seed=i) for i in range(3)]
    limits = Limits(10, 0, 2, 2, max_abs_leaf=1e4)
    ours = None
    for r in replies:
        ours = booster_json.append_trees(ours, booster_json.parse(r, limits))
    assert ours is not None
    total = sum(margins(r, X) - 0.5 for r in replies) + 0.5
    np.testing.assert_allclose(margins(ours.to_bytes(), X), total, rtol=1e-5, atol=1e-3)


def test_a_cyclic_reply_must_keep_the_trees_it_was_sent(binary_raw):
    first = booster_json.parse(binary_raw, BINARY)
    more = train(BC_X, BC_Y, "binary:logistic", rounds=1, base=binary_raw)
    start = xgb.Booster()
    start.load_model(bytearray(binary_raw))
    whole = xgb.train({"objective": "binary:logistic", "max_depth": 2, "base_score": 0.5}, xgb.DMatrix(BC_X, BC_Y),
                      1, xgb_model=start)
    grown = booster_json.parse(bytes(whole.save_raw("json")), Limits(30, 2, 3, 2))
    assert booster_json.extends(first, grown) and booster_json.extends(None, grown)
    rewritten = booster_json.parse(edited(bytes(whole.save_raw("json")), lambda d: model(d)["trees"][0][
        "split_conditions"].__setitem__(-1, 0.25)), Limits(30, 2, 3, 2))
    assert not booster_json.extends(first, rewritten)
    assert not booster_json.extends(first, booster_json.parse(more, Limits(30, 2, 3, 2)))  # the new tree alone


def test_padding_to_the_configured_depth_keeps_every_prediction():
    raw = train(WINE_X, WINE_Y, "multi:softprob", rounds=2, depth=2)
    limits = Limits(13, 3, 6, 4)
    booster = booster_json.parse(raw, limits)
    assert booster.max_depth == 2
    padded = booster_json.pad_depth(booster, 4)
    again = booster_json.parse(padded.to_bytes(indptr=False), limits)  # still passes every check
    assert again.max_depth == 4 and again.n_trees == booster.n_trees
    np.testing.assert_array_equal(margins(again.to_bytes(indptr=False), WINE_X), margins(raw, WINE_X))
    assert booster_json.pad_depth(booster, 2) is booster  # already there: unchanged
