"""Each owner's share of the penalty: FedAvg over 10 owners reaches the centralised model's size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import ConfigError


def test_sum_loss_families_scale_and_mean_loss_families_do_not():
    assert models.owner_params("LogisticRegression", {"C": 2.0}, 100, 1000)["C"] == pytest.approx(20.0)
    assert models.owner_params("LinearSVC", {}, 250, 1000)["C"] == pytest.approx(4.0)
    assert models.owner_params("Ridge", {"alpha": 2.0}, 100, 1000)["alpha"] == 2.0  # solved exactly: see models.py
    assert models.owner_params("Lasso", {}, 100, 1000)["alpha"] == models.default_params("Lasso")["alpha"]
    sgd = models.owner_params("SGDClassifier", {}, 100, 1000)
    assert sgd["alpha"] == models.default_params("SGDClassifier")["alpha"]


@pytest.mark.parametrize("rows,total", [(0, 10), (11, 10), (-1, 10)])
def test_a_federation_smaller_than_the_owner_is_refused(rows, total):
    with pytest.raises(ConfigError, match="federation-rows"):
        models.owner_params("LogisticRegression", {}, rows, total)


def _fedavg(X: np.ndarray, y: np.ndarray, parts: list[np.ndarray], scaled: bool, rounds: int = 5) -> np.ndarray:
    coef, icpt = np.zeros((1, X.shape[1])), np.zeros(1)
    for _ in range(rounds):
        fits = []
        for rows in parts:
            params = models.owner_params("LogisticRegression", {}, len(rows), len(y)) if scaled else {}
            model = models.set_parameters(models.build("LogisticRegression", params), [coef, icpt],
                                          models_schema(X.shape[1]))
            models.local_fit(model, "LogisticRegression", X[rows], y[rows], models_schema(X.shape[1]))
            fits.append((len(rows), model.coef_.copy(), np.atleast_1d(model.intercept_).copy()))
        weights = np.array([n for n, _, _ in fits]) / len(y)
        coef = sum(w * c for w, (_, c, _) in zip(weights, fits, strict=True))
        icpt = sum(w * i for w, (_, _, i) in zip(weights, fits, strict=True))
    return coef


def models_schema(n_features: int):
    from fedfhe_common.contracts.schema import DatasetSchema

    return DatasetSchema(name="bc", n_features=n_features, feature_min=-10.0, feature_max=10.0, classes=(0, 1))


def test_fedavg_of_scaled_owners_reaches_the_centralised_coefficients():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        central = LogisticRegression(C=1.0, max_iter=1000).fit(X, y).coef_
    size = np.linalg.norm(central)
    pooled_penalty = _fedavg(X, y, parts, scaled=False)
    shared_penalty = _fedavg(X, y, parts, scaled=True)
    # The pooled C on 1/10 of the rows shrinks the model to half the centralised size.
    assert np.linalg.norm(pooled_penalty) / size < 0.6
    assert 0.85 < np.linalg.norm(shared_penalty) / size < 1.15
    assert np.linalg.norm(shared_penalty - central) < 0.6 * np.linalg.norm(pooled_penalty - central)


@pytest.mark.parametrize("total,error", [("1000", "must be an integer"), (True, "must be an integer"),
                                         (10, "at least this owner's 100 training rows")])
def test_an_owner_refuses_a_coordinators_bad_federation_rows(total, error):
    from flwr.app import ConfigRecord

    from fedfhe_common.contracts import fl_contract as fc
    from fedfhe_common.runtime.errors import FedfheError
    from fedfhe_owner.clientapp.client_app import _run_params

    config = ConfigRecord({fc.MODEL_PARAMS: "{}", fc.FEDERATION_ROWS: total})
    with pytest.raises(FedfheError, match=error):
        _run_params(config, "LogisticRegression", 100)
    assert _run_params(ConfigRecord({fc.MODEL_PARAMS: "{}"}), "LogisticRegression", 100) == {}


@pytest.mark.parametrize(("family", "params", "message"), [
    ("LogisticRegression", {"C": "x"}, "The 'C' parameter of LogisticRegression must be a float"),
    ("Ridge", {"alpha": -1}, "The 'alpha' parameter of Ridge"),
    ("LogisticRegression", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
])
def test_a_bad_model_parameter_is_a_config_error_naming_it_not_a_traceback_at_fit(family, params, message):
    with pytest.raises(ConfigError, match=message):
        models.build(family, params)
    assert models.build("XGBClassifier", {"max_depth": 2}).max_depth == 2  # no constraints table: built as before


def test_a_bad_model_parameter_is_one_line_naming_the_option(tmp_path, capsys):
    """Issue 28: the message named the family, not the option to fix; XGBoost trained on with a typo."""
    from fedfhe_coordinator import cli as server_cli

    argv = ["train-local", "--data", str(tmp_path / "never-read.npz"), "--schema", "diabetes", "--out",
            str(tmp_path / "art"), "--release-key", str(tmp_path / "never-read.key")]
    for family, params, message in (("Ridge", '{"foo": 1}', "unexpected keyword argument 'foo'"),
                                    ("XGBRegressor", '{"max_dept": 2}', "unknown parameter 'max_dept'")):
        assert server_cli.main([*argv, "--model", family, "--model-params", params]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"fedfhe-coordinator train-local: error: --model-params: model {family}: "), err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):  # not JSON: argparse's usage error, naming the option
        server_cli.main([*argv, "--model-params", "{C: 1"])
    assert "argument --model-params: not JSON" in capsys.readouterr().err


def test_check_config_names_a_bad_training_model_params(tmp_path, capsys):
    import yaml

    from fedfhe_coordinator import cli as server_cli

    root = Path(server_cli.__file__).resolve().parents[2]
    coord = yaml.safe_load((root / "server" / "coordinator.example.yaml").read_text())
    coord["training"]["model_params"] = {"C": -1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(coord))
    assert server_cli.main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 1
    assert "training.model_params: model LogisticRegression: bad parameter: The 'C' parameter" in \
        capsys.readouterr().err
