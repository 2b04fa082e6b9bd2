"""SecAgg+ in a real federation (issue 13): the coordinator holds masked updates and only the true sum.

One SuperLink and three SuperNodes (TLS, SuperNode auth) serve every test in
file order; coordinator.yaml has ``training.secure_aggregation.enabled: true``.
Each owner keeps, on its own side (owner.yaml ``test_record_updates``), the true
update it hands to Flower's secaggplus_mod; the coordinator's ServerApp keeps
(run config ``test-record-dir``) what it received from each owner. The tests
compare the two. The last two tests kill SuperNodes mid-round, so they run last.

Held-out scores (issue 25): each owner's travel only inside its masked vector, as
one array after the model's (fedfhe_common.ml.score_sums); the coordinator receives
no owner's score in the clear and sends no final evaluate message.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import quantize
from reliability_helpers import Background, kill_on_nth_train_message, log_size, supernode_id

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models, score_sums
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_common.runtime.procs import wait_until
from fedfhe_coordinator import config as coord
from fedfhe_coordinator.train.training import run_training
from fedfhe_testbed.cluster import Cluster
from fedfhe_testbed.partition_cli import write_partitions

pytestmark = pytest.mark.timeout(600)
OWNERS = ["owner-0", "owner-1", "owner-2"]
ROUND_TIMEOUT = 15.0
CLIPPING_RANGE, QUANTIZATION_RANGE, MAX_WEIGHT = 8.0, 2**22, 10000.0
# SecAgg+ stage 2 (collect masked vectors) is each owner's third train message of a round.
MASKED_VECTOR_MESSAGE = 3


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("secagg")
    data = work / "data"
    write_partitions("digits", len(OWNERS), data, scheme="iid", seed=0)
    with Cluster(work) as c:
        c.make_pki(OWNERS)
        cfg_path = c.coordinator_config(
            OWNERS, rounds=1, min_nodes=2, round_timeout_s=ROUND_TIMEOUT, wait_for_nodes_s=60.0,
            public_test=str(data / "public-test.npz"),
            secure_aggregation={"enabled": True, "clipping_range": CLIPPING_RANGE,
                                "quantization_range": QUANTIZATION_RANGE, "max_weight": MAX_WEIGHT},
        )
        c.start_superlink(cfg_path)
        c.register(cfg_path)
        nodes = {}
        for i, owner in enumerate(OWNERS):
            # The last test runs a round of two owners (owner-2 is gone) that loses one more: owners accept
            # two-owner rounds here so that the round fails on the threshold, not on their policy.
            cfg = c.owner_config(owner, data / f"owner-{i}.npz", test_record_updates=str(work / "owners" / owner),
                                 privacy={"min_owners_per_round": 2})
            nodes[owner] = c.start_supernode(owner, cfg)
        for proc in nodes.values():
            wait_until(lambda p=proc: c._alive(p) and supernode_id(p.log) is not None, 120, f"{proc.name} to connect")
        yield {"cluster": c, "cfg": coord.load(cfg_path), "work": work, "nodes": nodes}


def owner_update(fed, owner: str, server_round: int = 1) -> tuple[list[np.ndarray], float]:
    """What ``owner`` handed to secaggplus_mod (recorded on its side): parameters and weight."""
    rec = np.load(fed["work"] / "owners" / owner / f"{owner}-round{server_round}.npz")
    return [rec["p0"], rec["p1"]], float(rec["weight"])


def seen(folder, name: str) -> list[np.ndarray]:
    rec = np.load(folder / name)
    return [rec[f"p{i}"] for i in range(len([k for k in rec.files if k.startswith("p")]))]


def weighted_mean(updates: dict[str, tuple[list[np.ndarray], float]]) -> list[np.ndarray]:
    total = sum(w for _, w in updates.values())
    return [sum(p[i] * w for p, w in updates.values()) / total for i in range(2)]


def test_coordinator_holds_masked_updates_and_unmasks_only_the_true_sum(fed):
    record = fed["work"] / "coordinator-saw"
    rows_seen: list[dict] = []
    artifact = run_training(fed["cfg"], {"test-record-dir": str(record)}, on_round=rows_seen.append)
    assert rows_seen[0]["fit_owners"] == OWNERS and rows_seen[0]["missing"] == [] and rows_seen[0]["failures"] == []
    assert all(rows_seen[0]["bytes"][o] > 0 for o in OWNERS), rows_seen[0]
    updates = {o: owner_update(fed, o) for o in OWNERS}
    ratios = {o: w / MAX_WEIGHT for o, (_, w) in updates.items()}
    # Stochastic rounding moves each value by < 1 step of 2c/Q; the sum is divided by the total weight ratio.
    tol = 2 * len(OWNERS) * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) / sum(ratios.values())
    true_sum = weighted_mean(updates)
    names = fc.score_names(DIGITS)
    for owner, (params, _) in updates.items():
        # The masked vector the coordinator received from this owner: [weight, coef, intercept, held-out score
        # sums], masked mod 2**32.
        masked = seen(record, f"masked-{owner}-round1.npz")
        assert [m.shape for m in masked[1:3]] == [p.shape for p in params]
        assert masked[3].shape == (score_sums.layout_length(names),)
        quantized = quantize([p * ratios[owner] for p in params], CLIPPING_RANGE, QUANTIZATION_RANGE)
        close = np.mean(np.abs(masked[1].astype(np.int64) - quantized[0].astype(np.int64)) <= 1)
        assert close < 0.01, f"{owner}'s masked vector matches its quantised update in {close:.1%} of values"
        # What the strategy received for this owner is the unmasked average, not the owner's update ...
        received = seen(record, f"strategy-{owner}-round1.npz")
        assert np.max(np.abs(received[0] - params[0])) > 100 * tol
        # ... and that average equals the weighted average of the true updates up to quantisation.
        for got, want in zip(received, true_sum, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        # In the clear it got this owner's weight and fit seconds, no held-out score.
        clear = json.loads(str(np.load(record / f"strategy-{owner}-round1.npz")["metrics"]))
        assert set(clear) == {fc.NUM_EXAMPLES, fc.FIT_SECONDS}, clear
    # The score sums it unmasked give the owners' row-weighted held-out scores (of the initial model), within
    # SecAgg+'s quantisation: under one step of 2 x max_weight / levels rows x score per owner.
    true = [json.loads(str(np.load(fed["work"] / "owners" / o / f"{o}-round1.npz")["metrics"])) for o in OWNERS]
    rows = sum(m[fc.EVAL_EXAMPLES] for m in true)
    sums = np.load(record / f"strategy-{OWNERS[0]}-round1.npz")["scores"]
    total = score_sums.total_factor([w for _, w in updates.values()], MAX_WEIGHT, QUANTIZATION_RANGE)
    got = score_sums.unpack(sums * total, names, len(OWNERS), MAX_WEIGHT, CLIPPING_RANGE, QUANTIZATION_RANGE)
    assert got["examples"] == rows
    step = 2 * len(OWNERS) * 2 * MAX_WEIGHT / (QUANTIZATION_RANGE * rows)
    for name, bound in (("accuracy", 1.0), ("loss", 10.0)):
        want = sum(m[f"{fc.EVAL_PREFIX}{name}"] * m[fc.EVAL_EXAMPLES] for m in true) / rows
        assert got[name] == pytest.approx(want, abs=step * bound), (name, got, want)
    # No final evaluate message in a secure run: the last round has no owners' score, and no eval phase.
    assert "clients" not in rows_seen[0] and "eval_nodes" not in rows_seen[0], rows_seen[0]
    # The signed artifact carries the same model, and says how it was trained.
    np.testing.assert_allclose(artifact.coef.ravel(), true_sum[0].ravel(), rtol=0, atol=tol)
    assert artifact.metrics["privacy"]["secure_aggregation"] is True
    assert artifact.metrics["privacy"]["reconstruction_threshold"] == 2


def test_dp_clips_each_update_and_adds_the_configured_noise(fed):
    noise, norm = 0.5, 0.5
    record = fed["work"] / "coordinator-saw-dp"
    artifact = run_training(fed["cfg"], {"test-record-dir": str(record), "dp-noise-multiplier": noise,
                                         "dp-clipping-norm": norm})
    start = [np.asarray(a) for a in to_arrays(models.initial_parameters("LogisticRegression", DIGITS))
             .to_numpy_ndarrays()]
    updates = {o: owner_update(fed, o) for o in OWNERS}
    norms = [np.sqrt(sum(np.sum((p - s) ** 2) for p, s in zip(params, start, strict=True)))
             for params, _ in updates.values()]
    assert min(norms) > 2 * norm, norms  # every owner's true update is longer than the clipping norm
    clean = seen(record, f"strategy-{OWNERS[0]}-round1.npz")  # the unmasked sum, before Flower adds noise
    clean_norm = np.sqrt(sum(np.sum((c - s) ** 2) for c, s in zip(clean, start, strict=True)))
    assert clean_norm <= norm * 1.001, clean_norm  # an average of clipped updates is no longer than the norm
    final = [artifact.coef.ravel(), np.atleast_1d(artifact.intercept).ravel()]
    added = np.concatenate([f - c.ravel() for f, c in zip(final, clean, strict=True)])
    sigma = noise * norm / len(OWNERS)  # Flower's compute_stdv: noise_multiplier * clipping_norm / sampled owners
    assert 0.8 * sigma < float(np.std(added)) < 1.2 * sigma, (np.std(added), sigma)
    assert abs(float(np.mean(added))) < 0.2 * sigma
    dp = artifact.metrics["privacy"]["dp"]
    assert dp == {"noise_multiplier": noise, "clipping_norm": norm, "noise_stddev_per_round": sigma}


def test_owner_killed_mid_round_above_the_threshold_the_round_completes(fed):
    """owner-2 is SIGKILLed as its masked vector is due: two of three owners still reach the threshold (2)."""
    c, victim = fed["cluster"], fed["nodes"]["owner-2"]
    rows: list[dict] = []
    offset = log_size(victim.log)
    run = Background(lambda: run_training(fed["cfg"], on_round=rows.append))
    kill_on_nth_train_message(c, victim, MASKED_VECTOR_MESSAGE, offset, 180, guard=run)
    artifact = run.result(300)
    assert rows[0]["fit_owners"] == ["owner-0", "owner-1"], rows[0]
    (lost,) = [m for m in rows[0]["missing"] if m["phase"] == "fit"]
    assert lost["owner"] == "owner-2" and lost["stage"] == "collect_masked_vectors", lost
    assert artifact.metrics["per_round"][0]["fit_owners"] == ["owner-0", "owner-1"]
    assert artifact.metrics["per_round"][0]["server"]["accuracy"] > 0.85


def test_too_many_owners_lost_fails_naming_them(fed):
    """With owner-2 gone, killing owner-1 too leaves one owner, below the threshold: the run fails, naming it."""
    c, victim = fed["cluster"], fed["nodes"]["owner-1"]
    offset = log_size(victim.log)
    run = Background(lambda: run_training(fed["cfg"]))
    kill_on_nth_train_message(c, victim, MASKED_VECTOR_MESSAGE, offset, 180, guard=run)
    with pytest.raises(FedfheError) as err:
        run.result(240)
    first = str(err.value).splitlines()[0]
    print(f"\n--- what `fedfhe-coordinator train` reports ---\n{err.value}")
    assert "round 1: secure aggregation stopped: fewer owners left than its reconstruction threshold (2)" in first
    assert "owner-1" in first and "owner-0" not in first.split("no reply from", 1)[1], first
