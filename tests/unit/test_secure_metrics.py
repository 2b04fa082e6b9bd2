"""Secure runs: an owner's held-out scores leave it only inside the SecAgg+ sum; FedAvgM on the secure average.

Issue 25: in a secure run each owner's FitRes used to carry its held-out loss, accuracy and row count in
the clear, so one query per class gave an owner's label histogram. Now the owner appends them to the
vector Flower's ``secaggplus_mod`` masks (``fedfhe_common.ml.score_sums``), and the coordinator derives the
federation's row-weighted scores from the unmasked aggregate.

The federation here is real on both sides, in one process: three owners' ClientApp
(``fedfhe_owner.clientapp.client_app.app``, with its mods: fedfhe's privacy_mod and Flower's secaggplus_mod) on
their own digits rows, and the coordinator's ``run_secure`` (Flower's DefaultWorkflow and
SecAggPlusWorkflow around fedfhe's SecureRecorder), joined by a grid that serialises every message
both ways as the SuperLink would. Every key, share and mask is Flower's; the grid keeps every reply,
which is everything the coordinator receives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import Code, Error, FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.preprocessing import StandardScaler
from test_fl_contract import content, task_identity  # noqa: F401 - Flower's Message needs a task identity

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models, score_sums
from fedfhe_common.ml.data import save_csv
from fedfhe_common.ml.preprocessing import Preprocessing
from fedfhe_common.runtime.config import from_dict
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy
from fedfhe_coordinator.serverapp.secure_training import NewtonRun, SecureRecorder, run_secure
from fedfhe_owner.clientapp.client_app import app
from fedfhe_owner.clientapp.run_ledger import LEDGER
from fedfhe_owner.clientapp.secure_client import seal_scores

SCHEMA = resolve_schema("digits")
FAMILY = "LogisticRegression"
NODES = (11, 22, 33)
ROWS = ((0, 150), (150, 390), (390, 720))  # 150, 240 and 330 rows: three weights, three held-out counts
CLIPPING_RANGE, LEVELS, MAX_WEIGHT = 8.0, 2**22, 1000.0
ROUNDS = 2
CLEAR = {fc.NUM_EXAMPLES, fc.FIT_SECONDS}  # all a secure reply says in the clear


class LocalGrid:
    """The SuperLink's part, in process: each message serialised to the owner's ClientApp and its reply back.

    ``received``: every reply, i.e. all the coordinator gets from the owners.
    """

    def __init__(self, owners: dict[int, Context]) -> None:
        self.owners = owners
        self.received: list[Message] = []
        self.pending: dict[str, Message] = {}
        self.run = SimpleNamespace(run_id=1)

    def get_node_ids(self) -> list[int]:
        return list(self.owners)

    def get_nodes(self) -> list:
        return [SimpleNamespace(node_id=n, public_key=f"key-{n}".encode()) for n in self.owners]

    def push_messages(self, messages) -> list[str]:  # type: ignore[no-untyped-def]
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            try:
                reply = app(message_from_proto(message_to_proto(m)), self.owners[m.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - what the SuperNode would send back
                error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}")
                reply = Message(error, reply_to=m)
            reply = message_from_proto(message_to_proto(reply))
            self.received.append(reply)
            self.pending[m.metadata.message_id] = reply
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, ids) -> list[Message]:  # type: ignore[no-untyped-def]
        return [self.pending.pop(i) for i in list(ids) if i in self.pending]


def owner_name(node: int) -> str:
    return f"owner-{NODES.index(node)}"


def federation(tmp_path: Path, server_step: tuple[float, float] | None = None, *, family: str = FAMILY,
               schema: DatasetSchema = SCHEMA, schema_ref: str = "digits", table: tuple | None = None,
               rows: tuple = ROWS, newton_run: NewtonRun | None = None, grid_class: type = LocalGrid,
               min_owners: int = 3) -> dict:
    """``ROUNDS`` secure rounds; the owners keep their true updates and metrics (node config test-record-updates)."""
    X, y = table if table is not None else load_digits(return_X_y=True)
    owners = {}
    for node, (a, b) in zip(NODES, rows, strict=True):
        path = tmp_path / f"{owner_name(node)}.csv"
        save_csv(path, X[a:b], y[a:b], schema)
        node_config = {"owner-id": owner_name(node), "data-path": str(path), "schema": schema_ref,
                       "holdout-fraction": 0.2, "seed": 0, fc.NODE_MIN_OWNERS: min_owners, fc.NODE_MAX_EVALUATIONS: 100,
                       fc.TEST_RECORD_UPDATES: str(tmp_path / "owners")}
        owners[node] = Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(),
                               run_config={fc.RUN_SECURE: True, fc.RUN_SECAGG_CLIPPING_RANGE: CLIPPING_RANGE,
                                           fc.RUN_SECAGG_MAX_WEIGHT: MAX_WEIGHT})
    keys = {fc.owner_key_id(f"key-{n}".encode()): owner_name(n) for n in NODES}
    run = RunConfig(num_server_rounds=ROUNDS, min_nodes=3, round_timeout=60.0, wait_for_nodes=10.0, owner_keys=keys,
                    secure_aggregation=True, secagg_max_weight=MAX_WEIGHT, secagg_clipping_range=CLIPPING_RANGE,
                    secagg_quantization_range=LEVELS)
    coordinator = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run.to_flower())
    config = ConfigRecord({fc.MODEL: family, fc.MODEL_PARAMS: "{}", fc.SCHEMA_NAME: schema.name,
                           fc.N_FEATURES: schema.n_features, fc.SCHEMA_SHA256: fc.schema_sha256(schema),
                           fc.LOCAL_EPOCHS: 1})
    if newton_run is not None:
        config[fc.PHASE] = fc.PHASE_NEWTON
    grid = grid_class(owners)
    initial = to_arrays(models.initial_parameters(family, schema))
    final, recorder, _ = run_secure(
        grid, coordinator, run, policy=ReplyPolicy(family, schema, newton_terms=newton_run is not None),
        progress=tmp_path / "progress.jsonl", config=config, initial=initial, connected=len(NODES),
        score=lambda params: {}, newton_run=newton_run, server_step=server_step)
    recorder.flush(ROUNDS)
    return {"grid": grid, "recorder": recorder, "final": final.to_numpy_ndarrays(), "work": tmp_path,
            "initial": initial.to_numpy_ndarrays()}


def truth(fed: dict, owner: str, server_round: int) -> tuple[list[np.ndarray], int, dict[str, float]]:
    """What ``owner`` handed on in ``server_round`` (kept on its side): parameters, weight, true metrics."""
    rec = np.load(fed["work"] / "owners" / f"{owner}-round{server_round}.npz")
    return [rec["p0"], rec["p1"]], int(rec["weight"]), json.loads(str(rec["metrics"]))


@pytest.fixture(scope="module")
def fedavg(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as patch:  # test_fl_contract's task identity, for the whole module's run
        for name, value in (("_run_id", 7), ("_node_id", SUPERLINK_NODE_ID), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)
        return federation(tmp_path_factory.mktemp("secure-metrics"))


def collect_replies(fed: dict) -> list[Message]:
    """The owners' masked-vector replies: the only ones that carry a FitRes."""
    return [m for m in fed["grid"].received if not m.has_error()
            and Key.MASKED_PARAMETERS in m.content.config_records.get(RECORD_KEY_CONFIGS, {})]


# ---- what the coordinator receives ----------------------------------------------------------------------

def test_no_reply_the_coordinator_receives_carries_an_owners_score(fedavg):
    received = fedavg["grid"].received
    assert received and not any(m.has_error() for m in received), [m.error for m in received if m.has_error()]
    true_scores = {float(v) for server_round in range(1, ROUNDS + 1) for node in NODES
                   for k, v in truth(fedavg, owner_name(node), server_round)[2].items()
                   if k.startswith(fc.EVAL_PREFIX) and isinstance(v, float)}
    for m in received:
        assert not any(len(r) for r in m.content.array_records.values())  # Flower cleared the clear update
        for record in [*m.content.metric_records.values(), *m.content.config_records.values()]:
            assert not [k for k in record if fc.EVAL_PREFIX in k], dict(record)
            assert not {v for v in record.values() if isinstance(v, float)} & true_scores
    fitres = collect_replies(fedavg)
    assert len(fitres) == ROUNDS * len(NODES)
    for m in fitres:
        res = compat.recorddict_to_fitres(m.content, keep_input=True)
        assert set(res.metrics) == CLEAR, res.metrics  # the weight Flower needs, and fit seconds
        assert res.num_examples == res.metrics[fc.NUM_EXAMPLES] <= MAX_WEIGHT


def test_each_owners_scores_travel_masked_at_the_end_of_its_vector(fedavg):
    length = score_sums.layout_length(fc.score_names(SCHEMA))
    for m in collect_replies(fedavg):
        owner = owner_name(int(m.metadata.src_node_id))
        server_round = int(m.metadata.group_id)
        _, weight, metrics = truth(fedavg, owner, server_round)
        masked = [bytes_to_ndarray(b) for b in m.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        assert [a.shape for a in masked[1:]] == [(10, 64), (10,), (length,)]  # [factor, coef, intercept, scores]
        scores = {k: metrics[f"{fc.EVAL_PREFIX}{k}"] for k in fc.score_names(SCHEMA)}
        array = score_sums.pack(scores, fc.score_names(SCHEMA), metrics[fc.EVAL_EXAMPLES], MAX_WEIGHT,
                                CLIPPING_RANGE)
        assert np.max(np.abs(array)) <= CLIPPING_RANGE  # nothing an honest owner sends is clipped by Flower
        (quantized,) = quantize([array], CLIPPING_RANGE, LEVELS)
        close = np.mean(np.abs(masked[-1].astype(np.int64) - quantized.astype(np.int64)) <= 1)
        assert close < 0.1, f"{owner}'s masked scores match its quantised scores in {close:.0%} of entries"
        assert weight == metrics[fc.NUM_EXAMPLES]


@pytest.mark.parametrize("scored", range(ROUNDS), ids=["initial-model", "round-1-model"])
def test_the_coordinator_recovers_the_row_weighted_average_of_the_owners_true_scores(fedavg, scored):
    """Round r's replies score the model round r - 1 made: the plain run's client_scores, up to quantisation.

    Each owner's entry is off by under one step (2 x range / levels), which is 2 x max_weight x B / levels
    held-out rows times score at magnitude B (B = 1 for accuracy; the loss is read at 1 or 10).
    """
    metrics = [truth(fedavg, owner_name(n), scored + 1)[2] for n in NODES]
    rows = sum(m[fc.EVAL_EXAMPLES] for m in metrics)
    got = fedavg["recorder"].entry(scored)["clients"]
    assert set(got) == {"loss", "accuracy", "examples"}
    assert got["examples"] == rows == sum(math.ceil(0.2 * (b - a)) for a, b in ROWS)
    step = 2 * len(NODES) * 2 * MAX_WEIGHT / (LEVELS * rows)
    for name, bound in (("accuracy", 1.0), ("loss", 10.0)):
        want = sum(m[f"{fc.EVAL_PREFIX}{name}"] * m[fc.EVAL_EXAMPLES] for m in metrics) / rows
        assert got[name] == pytest.approx(want, abs=step * bound), name
    unweighted = sum(m[f"{fc.EVAL_PREFIX}accuracy"] for m in metrics) / len(metrics)
    assert abs(got["accuracy"] - unweighted) > 10 * step  # weighted by each owner's held-out rows, as plain runs


def test_a_secure_newton_round_carries_the_scores_after_its_terms(tmp_path):
    """Newton's reply is three arrays of terms (fl_contract.newton_shapes); the score sums follow them."""
    X, y = load_breast_cancer(return_X_y=True)
    X = np.clip(StandardScaler().fit_transform(X), -9.9, 9.9)
    schema = DatasetSchema(name="bc", n_features=30, feature_min=-10.0, feature_max=10.0, classes=[0, 1])
    (tmp_path / "bc.json").write_text(schema.to_json())
    fed = federation(tmp_path, family=FAMILY, schema=schema, schema_ref=str(tmp_path / "bc.json"), table=(X, y),
                     rows=((0, 150), (150, 330), (330, 569)),
                     newton_run=NewtonRun(FAMILY, schema, {}, Preprocessing.identity(schema).largest_input()))
    assert not [m for m in fed["grid"].received if m.has_error()]
    for m in collect_replies(fed):
        masked = m.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        sums = score_sums.layout_length(fc.CLASSIFIER_SCORES)
        assert [bytes_to_ndarray(b).shape for b in masked[1:]] == [(31,), (31 * 32 // 2,), (1,), (sums,)]
        assert set(compat.recorddict_to_fitres(m.content, keep_input=True).metrics) == CLEAR
    rec = fed["recorder"]
    assert rec.entry(1)["newton"]["accepted"] and not rec.entry(1)["failures"]
    metrics = [json.loads(str(np.load(tmp_path / "owners" / f"{owner_name(n)}-round2.npz")["metrics"]))
               for n in NODES]
    rows = sum(m[fc.EVAL_EXAMPLES] for m in metrics)
    want = sum(m["eval-accuracy"] * m[fc.EVAL_EXAMPLES] for m in metrics) / rows
    assert rec.entry(1)["clients"]["accuracy"] == pytest.approx(want, abs=2 * len(NODES) * 2 * MAX_WEIGHT
                                                                / (LEVELS * rows))
    assert rec.entry(1)["clients"]["examples"] == rows


def test_progress_rows_show_the_federations_score_and_nothing_per_owner(fedavg):
    rows = [json.loads(line) for line in (fedavg["work"] / "progress.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert set(rows[0]["clients"]) == {"loss", "accuracy", "examples"} and rows[0]["clients"]["accuracy"] > 0.8
    assert "clients" not in rows[1]  # the final model's would need one more SecAgg+ round; no clear evaluation
    for r in rows:
        assert not [k for k in r if k.startswith(("eval", "client_"))], r
        assert r["fit_owners"] == ["owner-0", "owner-1", "owner-2"] and not r["failures"], r


def test_the_run_report_gives_the_federations_score_per_round_and_says_why_the_last_has_none(fedavg):
    from fedfhe_coordinator.train import report

    rows = [json.loads(line) for line in (fedavg["work"] / "progress.jsonl").read_text().splitlines()]

    class Artifact:
        family, schema = FAMILY, SCHEMA
        metrics = {"rounds": ROUNDS, "per_round": rows,
                   "privacy": {"secure_aggregation": True, "owners": 3, "reconstruction_threshold": 2}}

    rep = report.training_report(Artifact(), run_id=7, status="finished:completed", owners=["owner-0", "owner-1",
                                                                                           "owner-2"], seconds=1)
    assert [r["client_accuracy"] for r in rep["per_round"]] == [rows[0]["clients"]["accuracy"], None]
    text = report.markdown(rep, plot=False)
    assert "owners refuse a clear evaluation, so the final model has none" in text
    assert f"| 1 | - | {100 * rows[0]['clients']['accuracy']:.2f}% |" in text


# ---- FedAvgM on the secure average --------------------------------------------------------------------------

def test_fedavgm_steps_on_the_secure_averages_with_flowers_momentum(tmp_path):
    """x1 = x0 - lr v1, v1 = x0 - a1; x2 = x1 - lr v2, v2 = momentum v1 + (x1 - a2): a_r the rows-weighted
    average of the owners' true updates, as Flower's FedAvgM steps; each a_r is SecAgg+'s to within
    2 x owners x (2 x range / levels) / sum(weight / max_weight) per coefficient."""
    lr, momentum = 0.9, 0.5
    fed = federation(tmp_path, server_step=(lr, momentum))
    weights = {}
    averages = []
    for server_round in range(1, ROUNDS + 1):
        updates = [truth(fed, owner_name(n), server_round)[:2] for n in NODES]
        total = sum(w for _, w in updates)
        weights[server_round] = total
        averages.append([sum(p[i] * w for p, w in updates) / total for i in range(2)])
    tol = 2 * len(NODES) * (2 * CLIPPING_RANGE / LEVELS) / (min(weights.values()) / MAX_WEIGHT)
    x0 = fed["initial"]
    v1 = [x - a for x, a in zip(x0, averages[0], strict=True)]
    x1 = [x - lr * v for x, v in zip(x0, v1, strict=True)]
    v2 = [momentum * v + (x - a) for v, x, a in zip(v1, x1, averages[1], strict=True)]
    x2 = [x - lr * v for x, v in zip(x1, v2, strict=True)]
    sent = to_arrays(fed["recorder"].global_params[2]).to_numpy_ndarrays()  # what round 2 trained on
    for got, want in zip(sent, x1, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=2 * tol)
    for got, want in zip(fed["final"], x2, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * tol)
    assert np.max(np.abs(fed["final"][0] - averages[1][0])) > 100 * tol  # not FedAvg's model: the momentum acted
    assert set(fed["recorder"].entry(1)["clients"]) == {"loss", "accuracy", "examples"}


def coordinator(tmp_path: Path, aggregation: str) -> CoordinatorConfig:
    keys = []
    for i in range(3):
        (tmp_path / f"owner-{i}.supernode.pub").write_text("")
        keys.append(f"owner-{i}.supernode.pub")
    data = {"superlink": {"certfile": "a", "keyfile": "b", "ca_certfile": "c"}, "state_dir": "s", "release_key": "k",
            "supernode_public_keys": keys,
            "training": {"output_dir": "o", "min_nodes": 3, "aggregation": aggregation,
                         "secure_aggregation": {"enabled": True}}}
    if aggregation == "fedavgm":
        data["training"] |= {"server_learning_rate": 0.9, "server_momentum": 0.5}
    return from_dict(CoordinatorConfig, data, base=tmp_path)


def test_fedavgm_is_accepted_with_secure_aggregation(tmp_path):
    t = coordinator(tmp_path, "fedavgm").training
    assert t.aggregation == "fedavgm" and t.secure_aggregation.enabled and t.server_momentum == 0.5


@pytest.mark.parametrize("aggregation", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_robust_rules_stay_refused_under_secure_aggregation(tmp_path, aggregation):
    with pytest.raises(ConfigError) as err:
        coordinator(tmp_path, aggregation)
    assert ("training.secure_aggregation.enabled: SecAgg+ sums masked updates, so only fedavg, fedavgm or newton "
            f"can aggregate them, not training.aggregation {aggregation}") in str(err.value)


# ---- each side's refusals -------------------------------------------------------------------------------------

def secure_owner(**state: object) -> Context:
    context = Context(run_id=1, node_id=11, node_config={fc.NODE_MAX_EVALUATIONS: 100}, state=RecordDict(),
                      run_config={fc.RUN_SECURE: True, fc.RUN_SECAGG_CLIPPING_RANGE: CLIPPING_RANGE,
                                  fc.RUN_SECAGG_MAX_WEIGHT: MAX_WEIGHT})
    if state:
        context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(SecAggPlusState(**state).to_dict())
    return context


def test_an_owner_refuses_a_clear_evaluation_in_a_secure_run_before_counting_it():
    arrays = to_arrays(models.initial_parameters(FAMILY, SCHEMA))
    msg = Message(content=RecordDict({fc.ARRAYS: arrays, fc.CONFIG: ConfigRecord({fc.MODEL: FAMILY})}),
                  dst_node_id=11, message_type=MessageType.EVALUATE)
    context = secure_owner()
    with pytest.raises(fc.InstructionRefused, match="secure run: .*only inside the SecAgg\\+ sum"):
        app(msg, context)
    assert LEDGER not in context.state.config_records  # not even counted as an evaluation


def test_an_owner_refuses_a_setup_that_would_scale_its_scores_apart():
    """A max_weight other than the run config's, for one owner, would weigh its score array apart from the rest."""
    context = secure_owner(current_stage=Stage.SHARE_KEYS, nid=11, sample_num=3, share_num=3, threshold=2,
                           clipping_range=CLIPPING_RANGE, target_range=LEVELS, mod_range=1 << 32, max_weight=1e6)
    reply = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(2)]), 100,
                   {fc.NUM_EXAMPLES: 100, fc.FIT_SECONDS: 0.1, "eval-loss": 0.3, "eval-accuracy": 0.9,
                    fc.EVAL_EXAMPLES: 25, fc.EVAL_SECONDS: 0.01})
    out = Message(content=compat.fitres_to_recorddict(reply, keep_input=True), dst_node_id=11,
                  message_type=MessageType.TRAIN)
    with pytest.raises(fc.InstructionRefused, match="max_weight 1000000.0 differs from the run config's 1000.0"):
        seal_scores(out, context)


def recorder(tmp_path: Path) -> SecureRecorder:
    rec = SecureRecorder(tmp_path / "progress.jsonl", ReplyPolicy(FAMILY, SCHEMA), {}, 1.0, inner=FedAvg(),
                         min_nodes=3, max_weight=MAX_WEIGHT, threshold=2, score=lambda params: {},
                         clipping_range=CLIPPING_RANGE, quantization_range=LEVELS)
    ok = {"sent": list(NODES), "ok": list(NODES), "failed": {}, "gone": {}}
    rec.grid = SimpleNamespace(log={1: {Stage.SETUP: ok, Stage.COLLECT_MASKED_VECTORS: ok}})
    return rec


def aggregate(arrays: list[np.ndarray], **metrics: object) -> list[tuple[SimpleNamespace, FitRes]]:
    """What SecAggPlusWorkflow hands the strategy: every owner's FitRes holding the same unmasked average."""
    params = ndarrays_to_parameters(arrays)
    clear = {fc.NUM_EXAMPLES: 100, fc.FIT_SECONDS: 0.1}
    return [(SimpleNamespace(node_id=n), FitRes(Status(Code.OK, ""), params, 100, clear | (metrics if n == 22 else {})))
            for n in NODES]


def test_the_coordinator_refuses_a_clear_score_in_a_secure_reply(tmp_path):
    model = to_arrays(models.initial_parameters(FAMILY, SCHEMA)).to_numpy_ndarrays()
    sums = np.zeros(score_sums.layout_length(fc.score_names(SCHEMA)))
    rec = recorder(tmp_path)
    assert rec.aggregate_fit(1, aggregate([*model, sums], **{"eval-accuracy": 0.9}), []) == (None, {})
    (failure,) = rec.entry(1)["failures"]
    assert failure["owner"] == "node-22" and "unexpected metric(s) 'eval-accuracy'" in failure["reason"]
    assert rec.entry(0)["clients"] == {}  # a sum with a refused reply in it gives no scores either


def test_the_coordinator_takes_the_score_sums_only_from_a_secure_aggregate(tmp_path):
    model = to_arrays(models.initial_parameters(FAMILY, SCHEMA)).to_numpy_ndarrays()
    rec = recorder(tmp_path)
    assert rec.aggregate_fit(1, aggregate(model), []) == (None, {})  # no sums: not what owners send
    assert "a secure aggregate holds 2 arrays and the score sums, got 2" in rec.entry(1)["failures"][0]["reason"]
    with pytest.raises(fc.ReplyRejected, match="expected 2 parameter arrays"):  # plain mode: no extra array
        fc.check_reply(content([*model, np.zeros(score_sums.layout_length(fc.score_names(SCHEMA)))]), "train",
                       FAMILY, SCHEMA, 1000)


# ---- the layout itself -------------------------------------------------------------------------------------

def federation_sum(owners: list[tuple[dict[str, float], int]], names: tuple[str, ...]) -> np.ndarray:
    return sum(score_sums.pack(scores, names, rows, MAX_WEIGHT, CLIPPING_RANGE) for scores, rows in owners)


def test_scores_of_any_magnitude_are_read_where_no_owner_is_clipped():
    names = fc.REGRESSOR_SCORES
    owners = [({"loss": 2500.0, "r2": 0.81}, 40), ({"loss": 7.2e5, "r2": -30.5}, 25), ({"loss": 0.3, "r2": 0.97}, 90)]
    for scores, rows in owners:
        assert np.max(np.abs(score_sums.pack(scores, names, rows, MAX_WEIGHT, CLIPPING_RANGE))) <= CLIPPING_RANGE
    got = score_sums.unpack(federation_sum(owners, names), names, 3, MAX_WEIGHT, CLIPPING_RANGE, LEVELS)
    for name in names:
        want = sum(s[name] * n for s, n in owners) / 155
        assert got[name] == pytest.approx(want, rel=1e-12)
    assert got["examples"] == 155


def test_an_undefined_loss_counts_only_the_owners_that_have_one():
    names = fc.CLASSIFIER_SCORES
    owners = [({"loss": float("nan"), "accuracy": 0.5}, 10), ({"loss": 0.4, "accuracy": 0.9}, 30)]
    got = score_sums.unpack(federation_sum(owners, names), names, 2, MAX_WEIGHT, CLIPPING_RANGE, LEVELS)
    assert got["loss"] == pytest.approx(0.4) and got["accuracy"] == pytest.approx((5 + 27) / 40)
    assert got["examples"] == 40


def test_flowers_weighting_is_undone_by_the_factor_both_sides_compute():
    """Flower multiplies by round(w / max_weight x levels) / levels and divides the sum by those factors added."""
    weights = [120, 192, 264]
    factors = [score_sums.weight_factor(w, MAX_WEIGHT, LEVELS) for w in weights]
    assert score_sums.total_factor(weights, MAX_WEIGHT, LEVELS) == pytest.approx(sum(factors), rel=1e-15)
    arrays = [score_sums.pack({"loss": 0.2 * i, "accuracy": 0.3 * i}, fc.CLASSIFIER_SCORES, 10 * i, MAX_WEIGHT,
                              CLIPPING_RANGE) for i in (1, 2, 3)]
    average = sum(f * (a / f) for f, a in zip(factors, arrays, strict=True)) / sum(factors)
    np.testing.assert_allclose(average * score_sums.total_factor(weights, MAX_WEIGHT, LEVELS), sum(arrays),
                               rtol=1e-12)


def test_sums_no_honest_owners_make_are_refused():
    names = fc.CLASSIFIER_SCORES
    honest = federation_sum([({"loss": 0.4, "accuracy": 0.9}, 30)], names)
    for broken in (honest * -1, np.where(np.arange(honest.size) == 2, 3 * CLIPPING_RANGE, honest),
                   np.full_like(honest, np.nan), honest[:-1]):
        with pytest.raises(ValueError):
            score_sums.unpack(broken, names, 1, MAX_WEIGHT, CLIPPING_RANGE, LEVELS)
    assert score_sums.unpack(np.zeros_like(honest), names, 1, MAX_WEIGHT, CLIPPING_RANGE, LEVELS) == {}
