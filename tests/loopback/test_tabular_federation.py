"""A real mixed-type table through the whole pipeline (issue 23): categories, gaps, string labels, any column order.

Three owners hold Palmer penguins rows as CSV text (``NA`` gaps, island and sex
categories, species names as labels; owner-1's columns in reverse order). One
SuperLink and three SuperNodes (TLS, SuperNode auth) serve both tests:

- a plain run: the statistics round, then federated Newton steps; the artifact carries the
  preprocessing; compile, publish, and encrypted predictions through the
  inference node from ``fedfhe-owner predict`` on rows with gaps, decrypted to
  species names, equal to the simulated ones;
- a federated XGBoost run (Flower's FedXgbBagging, issue 27) on the same three owners: the booster is
  compiled within the run's n_bits budget, published and predicted encrypted from ``fedfhe-owner
  predict``, equal to the simulated classes;
- a secure run: the statistics go through SecAgg+, so the coordinator holds
  each owner's statistics vector only masked, and the preprocessing it derives
  is the row-weighted average of the owners' true vectors; then one newton
  round, whose scaled gradients and Hessians the coordinator also holds only
  masked, and whose step is the one the owners' true terms give.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.common.secure_aggregation.quantization import quantize
from reliability_helpers import supernode_id

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.ml import models, newton
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.ml.scoring import prediction_score
from fedfhe_common.runtime.procs import venv_bin, wait_until
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.serverapp.secure_training import NewtonRun
from fedfhe_coordinator.train.training import run_training, with_secure_aggregation
from fedfhe_testbed.cluster import Cluster, inference_config
from fedfhe_testbed.tabular import write_tabular_partitions

# slow: 90 s and 73 s for two tests, 43 s for the third (`make test`, 2026-12-07)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
OWNERS = ["owner-0", "owner-1", "owner-2"]
# max_weight near the owners' rows (about 75 each), as docs/security.md advises: each owner's values travel times
# rows / max_weight, so a larger one costs newton's terms precision (10000: the first step off by 3%).
CLIPPING_RANGE, QUANTIZATION_RANGE, MAX_WEIGHT = 8.0, 2**22, 200.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("tabular")
    data = work / "data"
    summary = write_tabular_partitions("penguins", len(OWNERS), data, "iid", 0.5, 0, 0.2)
    with Cluster(work, secure=False) as c:
        c.make_pki(OWNERS)
        cfg_path = c.coordinator_config(
            OWNERS, rounds=3, min_nodes=3, round_timeout_s=30.0, wait_for_nodes_s=60.0,
            schema=summary["schema"], public_test=summary["public_test"]["path"],
            secure_aggregation={"enabled": False, "clipping_range": CLIPPING_RANGE,
                                "quantization_range": QUANTIZATION_RANGE, "max_weight": MAX_WEIGHT},
        )
        c.start_superlink(cfg_path)
        c.register(cfg_path)
        owner_cfgs, nodes = {}, {}
        for i, owner in enumerate(OWNERS):
            owner_cfgs[owner] = c.owner_config(owner, data / f"owner-{i}.csv", schema=summary["schema"],
                                               test_record_updates=str(work / "owners" / owner))
            nodes[owner] = c.start_supernode(owner, owner_cfgs[owner])
        for proc in nodes.values():
            wait_until(lambda p=proc: c._alive(p) and supernode_id(p.log) is not None, 120, f"{proc.name} to connect")
        yield {"cluster": c, "cfg": coord.load(cfg_path), "work": work, "summary": summary, "owner_cfgs": owner_cfgs}


def test_mixed_table_trains_federated_and_predicts_encrypted_names(fed, tmp_path):
    c, summary, work = fed["cluster"], fed["summary"], fed["work"]
    header = (work / "data" / "owner-1.csv").read_text().splitlines()[0]
    assert header.startswith("year,sex,"), header  # owner-1 holds its columns in another order
    assert "NA" in (work / "data" / "owner-0.csv").read_text()  # and the owners' files have gaps
    rows: list[dict] = []
    artifact = run_training(fed["cfg"], on_round=rows.append)
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["fit_nodes"] == 3 for r in rows)
    # aggregation auto: the owners' averaged gradients and Hessians, one Newton step a round, each lowering
    # the pooled objective.
    assert artifact.metrics["aggregation"]["used"] == "newton", artifact.metrics["aggregation"]
    objectives = [r["newton"]["objective"] for r in rows]
    assert all(r["newton"]["accepted"] for r in rows) and objectives == sorted(objectives, reverse=True)
    stats = artifact.metrics["statistics"]
    assert stats["mode"] == "plain" and stats["owners"] == OWNERS and stats["failures"] == []
    schema = artifact.schema
    X_pub, y_pub = load_table(summary["public_test"]["path"], schema)
    assert np.isnan(X_pub).any()  # the public rows have gaps too: the preprocessing fills them
    prep = artifact.prep
    assert prep.to_dict()["inputs"] == schema.feature_names()
    clear = prediction_score(artifact.to_estimator().predict(prep.transform(X_pub)), y_pub, schema)
    assert clear >= 0.9, clear
    assert rows[-1]["server"]["accuracy"] == pytest.approx(clear)

    from fedfhe_common.pki.release import load_signing_key
    from fedfhe_coordinator.fhe.compile import compile_artifact

    bundle, fhe_model = compile_artifact(work / "training" / "artifact", work / "bundle", model_id="penguins-lr",
                                         version="1", eval_set=(X_pub, y_pub),
                                         signing_key=load_signing_key(c.pki / "release.key"))
    assert bundle.meta["preprocessing"] == prep.to_dict()  # signed with the manifest
    m = bundle.meta["metrics"]
    assert abs(m["clear_accuracy"] - m["fhe_simulated_accuracy"]) <= 0.005, m
    cfg = inference_config(c, work)
    res = subprocess.run([venv_bin("fedfhe-inference"), "publish", "--config", str(cfg), str(bundle.directory)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    node = c.start_inference(cfg, OWNERS[0])
    ep = node.endpoint(OWNERS[0])
    owner_yaml = tmp_path / "owner.yaml"
    doc = yaml.safe_load(fed["owner_cfgs"][OWNERS[0]].read_text())
    doc["inference"] = {"address": ep.address, "certfile": str(ep.certfile), "keyfile": str(ep.keyfile),
                        "ca_certfile": str(ep.ca_certfile), "model_id": "penguins-lr"}
    doc["state_dir"] = str(tmp_path / "state")
    owner_yaml.write_text(yaml.safe_dump(doc))
    out = tmp_path / "predictions.json"
    res = subprocess.run([venv_bin("fedfhe-owner"), "predict", "--config", str(owner_yaml), "--input",
                          summary["public_test"]["path"], "--out", str(out), "--no-progress", "--format", "json"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    predicted = [r["prediction"] for r in json.loads(out.read_text())["predictions"]]
    assert set(predicted) <= {"Adelie", "Chinstrap", "Gentoo"}
    simulated = schema.decode_labels(fhe_model.predict(prep.transform(X_pub), fhe="simulate"))
    assert predicted == list(simulated)  # FHE equals simulated, decoded to the declared class names
    assert json.loads(res.stdout)["accuracy"] == pytest.approx(m["fhe_simulated_accuracy"])

    # An owner whose schema differs from the model's (one bound moved) is refused before it encrypts a row.
    other = yaml.safe_load((work / "data" / "schema.yaml").read_text())
    other["columns"][1]["max"] = 61.0
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    doc["schema"] = str(tmp_path / "other.yaml")
    owner_yaml.write_text(yaml.safe_dump(doc))
    res = subprocess.run([venv_bin("fedfhe-owner"), "predict", "--config", str(owner_yaml), "--input",
                          summary["public_test"]["path"], "--out", str(tmp_path / "p2.csv"), "--no-progress"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 1 and "differs from this owner's schema" in res.stderr and "columns" in res.stderr, \
        res.stderr
    assert not (tmp_path / "p2.csv").exists()


def test_federated_xgboost_compiles_publishes_and_predicts_encrypted(fed, tmp_path):
    c, summary, work = fed["cluster"], fed["summary"], fed["work"]
    cfg = fed["cfg"]
    # Depth 2 and 4 bits keep a row's FHE cost to seconds on 2 cores: 3 owners x 2 rounds x 3 classes = 18 trees.
    boosting = dataclasses.replace(cfg.training, model="XGBClassifier", rounds=2,
                                   xgboost={"mode": "bagging", "max_depth": 2, "eta": 0.5},
                                   xgboost_budget={"max_trees": 18, "max_depth": 2, "max_n_bits": 4})
    rows: list[dict] = []
    artifact = run_training(dataclasses.replace(cfg, training=boosting), on_round=rows.append)
    assert [r["round"] for r in rows] == [1, 2] and all(r["fit_nodes"] == 3 and not r["failures"] for r in rows)
    assert [r["trees"] for r in rows] == [9, 18]
    assert artifact.family == "XGBClassifier" and artifact.tree is not None
    assert artifact.metrics["aggregation"]["used"] == "fedxgb-bagging"
    assert artifact.metrics["xgboost_budget"] == {"max_trees": 18, "max_n_bits": 4}
    schema, prep = artifact.schema, artifact.prep
    X_pub, y_pub = load_table(summary["public_test"]["path"], schema)
    clear = prediction_score(artifact.to_estimator().predict(prep.transform(X_pub)), y_pub, schema)
    assert clear >= 0.9, clear
    assert rows[-1]["server"]["accuracy"] == pytest.approx(clear)  # the round table scored the same booster

    from fedfhe_common.pki.release import load_signing_key
    from fedfhe_common.runtime.errors import ConfigError
    from fedfhe_coordinator.fhe.compile import compile_artifact

    key = load_signing_key(c.pki / "release.key")
    with pytest.raises(ConfigError, match="above the run's training.xgboost_budget.max_n_bits 4"):
        compile_artifact(work / "training" / "artifact", tmp_path / "too-fine", model_id="penguins-xgb", version="1",
                         n_bits=6, signing_key=key)
    bundle, fhe_model = compile_artifact(work / "training" / "artifact", tmp_path / "bundle",
                                         model_id="penguins-xgb", version="1", signing_key=key)
    assert bundle.meta["n_bits"] == 4  # the budget's cap, below the trees' default of 6
    inference = inference_config(c, tmp_path)
    res = subprocess.run([venv_bin("fedfhe-inference"), "publish", "--config", str(inference),
                          str(bundle.directory)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    node = c.start_inference(inference, OWNERS[1])
    ep = node.endpoint(OWNERS[1])
    doc = yaml.safe_load(fed["owner_cfgs"][OWNERS[1]].read_text())
    doc["inference"] = {"address": ep.address, "certfile": str(ep.certfile), "keyfile": str(ep.keyfile),
                        "ca_certfile": str(ep.ca_certfile), "model_id": "penguins-xgb"}
    doc["state_dir"] = str(tmp_path / "state")
    owner_yaml = tmp_path / "owner.yaml"
    owner_yaml.write_text(yaml.safe_dump(doc))
    lines = Path(summary["public_test"]["path"]).read_text().splitlines()
    (tmp_path / "rows.csv").write_text("\n".join(lines[:4]) + "\n")  # three rows: seconds each in FHE
    out = tmp_path / "predictions.json"
    res = subprocess.run([venv_bin("fedfhe-owner"), "predict", "--config", str(owner_yaml), "--input",
                          str(tmp_path / "rows.csv"), "--out", str(out), "--no-progress", "--format", "json"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    predicted = [r["prediction"] for r in json.loads(out.read_text())["predictions"]]
    simulated = schema.decode_labels(fhe_model.predict(prep.transform(X_pub[:3]), fhe="simulate"))
    assert predicted == list(simulated)  # FHE equals simulated, decoded to the species names


def test_statistics_go_through_secure_aggregation_masked(fed):
    record = fed["work"] / "coordinator-saw"
    artifact = run_training(with_secure_aggregation(fed["cfg"], True),
                            {"test-record-dir": str(record), "num-server-rounds": 1})
    schema = artifact.schema
    stats = artifact.metrics["statistics"]
    assert {k: stats[k] for k in ("mode", "owners_in_sum")} == {"mode": "secure-aggregation", "owners_in_sum": 3}
    true = {}
    for owner in OWNERS:
        rec = np.load(fed["work"] / "owners" / owner / f"{owner}-round0.npz")  # kept on the owner's side
        true[owner] = (rec["p0"], float(rec["weight"]))
        assert true[owner][0].shape == (3 * schema.n_features,)
    # The row count each owner's penalty share is scaled by (federation-rows): the owners' weights, in the clear.
    assert stats["rows"] == sum(int(w) for _, w in true.values())
    ratios = {o: w / MAX_WEIGHT for o, (_, w) in true.items()}
    for owner, (vector, _) in true.items():
        # What the coordinator received from this owner: [weight, statistics], masked mod 2**32.
        masked = np.load(record / "statistics" / f"masked-{owner}-round1.npz")
        assert masked["p1"].shape == vector.shape
        quantized = quantize([vector * ratios[owner]], CLIPPING_RANGE, QUANTIZATION_RANGE)[0]
        close = np.mean(np.abs(masked["p1"].astype(np.int64) - quantized.astype(np.int64)) <= 1)
        assert close < 0.01, f"{owner}'s masked statistics match its quantised vector in {close:.1%} of values"
    total = sum(w for _, w in true.values())
    pooled = sum(v * w for v, w in true.values()) / total
    expected = Preprocessing.from_moments(schema, pooled)
    got = artifact.prep
    # The sum is exact up to SecAgg+'s quantisation (2c/Q per value, a few steps over three owners).
    np.testing.assert_allclose(got.center, expected.center, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got.scale, expected.scale, rtol=1e-2)
    loaded = TrainingArtifact.load(fed["work"] / "training" / "artifact")
    assert loaded.prep.to_dict() == got.to_dict() and artifact.metrics["privacy"]["secure_aggregation"] is True

    # Then one newton round through SecAgg+: each owner's terms scaled into the clipping range, masked.
    assert artifact.metrics["aggregation"]["used"] == "newton", artifact.metrics["aggregation"]
    family, p = artifact.family, newton.n_params(artifact.family, schema)
    run = NewtonRun(family, schema, {}, got.largest_input())
    start = models.initial_parameters(family, schema)
    scales = run.round_scales(1, start, CLIPPING_RANGE)
    terms = {}
    for owner in OWNERS:
        rec = np.load(fed["work"] / "owners" / owner / f"{owner}-round1.npz")
        sent = [rec[f"p{i}"] for i in range(3)]
        assert [a.shape for a in sent] == [(p,), (p * (p + 1) // 2,), (1,)]
        terms[owner] = ([a / s for a, s in zip(sent, scales, strict=True)], float(rec["weight"]))
        masked = np.load(record / f"masked-{owner}-round1.npz")
        quantized = quantize([sent[1] * ratios[owner]], CLIPPING_RANGE, QUANTIZATION_RANGE)[0]
        close = np.mean(np.abs(masked["p2"].astype(np.int64) - quantized.astype(np.int64)) <= 1)
        assert close < 0.01, f"{owner}'s masked Hessian matches its quantised terms in {close:.1%} of values"
    # The step the coordinator took is the one the owners' true terms give, up to SecAgg+'s rounding.
    averaged = [sum(t[i] * w for t, w in terms.values()) / total for i in range(3)]
    loss, grad, hess = fc.unpack_newton(averaged)
    expected_w = newton.Stepper(schema.n_features).step(
        newton.flatten(start, family, schema), loss, grad, hess, newton.penalty_strength(family, {}, int(total)))
    got_w = newton.flatten([artifact.coef, np.atleast_1d(artifact.intercept)], family, schema)
    assert np.linalg.norm(got_w - expected_w) <= 0.02 * np.linalg.norm(expected_w)
