"""A regressor under SecAgg+: its parameters travel in units of the declared target range (secure_target).

Issue 25. SecAgg+ clips every value it sums at +-clipping_range (8); diabetes's Ridge has an intercept of
~152 and coefficients in the hundreds, so a secure FedAvg run used to end at R^2 -4.14. The federation is
test_secure_metrics's: three owners' real ClientApps on their own diabetes rows and the coordinator's real
``run_secure`` (Flower's SecAggPlusWorkflow), so the map runs on both sides exactly as in a deployment.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from test_secure_metrics import CLIPPING_RANGE, NODES, federation, owner_name, truth

from fedfhe_common.contracts.schema import DIABETES, DatasetSchema
from fedfhe_common.ml import secure_target

ROWS = ((0, 120), (120, 270), (270, 442))
ROUNDS = 2


@pytest.fixture(scope="module")
def ridge(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as patch:  # test_fl_contract's task identity, for the whole module's run
        for name, value in (("_run_id", 7), ("_node_id", SUPERLINK_NODE_ID), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)
        return federation(tmp_path_factory.mktemp("secure-ridge"), family="Ridge", schema=DIABETES,
                          schema_ref="diabetes", table=load_diabetes(return_X_y=True), rows=ROWS)


def test_what_an_owner_masks_lies_inside_the_clipping_range(ridge):
    """Nothing an honest owner sends is clipped: the wire values are far inside +-8."""
    for node in NODES:
        params, _, _ = truth(ridge, owner_name(node), ROUNDS)
        real = secure_target.from_wire(DIABETES, params)
        assert max(float(np.max(np.abs(p))) for p in params) < CLIPPING_RANGE / 2
        assert float(np.max(np.abs(real[0]))) > CLIPPING_RANGE  # the real coefficients are not
        assert 120 < float(real[1][0]) < 190  # an intercept near the target's mean (152)


def test_the_coordinator_ends_with_the_weighted_average_of_the_owners_real_models(ridge):
    updates = [truth(ridge, owner_name(node), ROUNDS) for node in NODES]
    weights = np.array([w for _, w, _ in updates], dtype=np.float64)
    expected = [sum(w * secure_target.from_wire(DIABETES, p)[i] for (p, _, _), w in zip(updates, weights,
                                                                                      strict=True)) / weights.sum()
                for i in range(2)]
    coef, intercept = ridge["final"]
    # SecAgg+ quantises weight/max_weight times each wire value in steps of 16 / 2**22; times the half-width
    np.testing.assert_allclose(coef, expected[0], atol=0.05)
    np.testing.assert_allclose(np.ravel(intercept), np.ravel(expected[1]), atol=0.05)


def test_the_secure_model_scores_like_plain_fedavg_of_the_same_owners(ridge):
    """Plain FedAvg's model here: each owner's Ridge on its slice, averaged by rows (the owners fit 80 % of it).
    Before the map, the clipped secure run scored R^2 -4.14."""
    X, y = load_diabetes(return_X_y=True)
    fits = [Ridge().fit(X[a:b], y[a:b]) for a, b in ROWS]
    sizes = [b - a for a, b in ROWS]
    plain = r2_score(y, X @ np.average([f.coef_ for f in fits], axis=0, weights=sizes)
                     + np.average([f.intercept_ for f in fits], weights=sizes))
    coef, intercept = ridge["final"]
    secure = r2_score(y, X @ coef + float(np.ravel(intercept)[0]))
    assert secure >= 0.9 * plain > 0.2, (secure, plain)


def test_an_owner_refuses_a_secure_regressor_without_target_bounds():
    unbounded = DatasetSchema(name="reg", n_features=3, feature_min=0, feature_max=1, task="regression")
    with pytest.raises(ValueError, match="schema reg: under secure aggregation a regressor's parameters travel in "
                                         "units of its target's declared range"):
        secure_target.to_wire(unbounded, [np.zeros(3), np.zeros(1)])
    params = [np.array([1.0, -2.0, 3.0]), np.array([200.0])]
    np.testing.assert_allclose(secure_target.from_wire(DIABETES, secure_target.to_wire(DIABETES, params))[0],
                               params[0])
