"""Issue 25: an owner trains on (or computes newton's terms at) each global model at most once per run.

A coordinator that sends one model twice, to owner sets that differ by one owner, gets that owner's update as
the difference of the two aggregates, even under SecAgg+. Owners refuse the second time, before a row is read
(Flower's real Context and Message, the real handlers; no data-path, so a handler that got past the check fails
reading the owner's file instead). The honest coordinator never resends: the round that would is not sent and
training ends there (rounds.Recording.note_model), which Ridge under FedAvg reaches in round 3.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import FedAvg
from test_fl_contract import Grid, metrics, task_identity  # noqa: F401 - Flower's Message needs a task identity
from test_newton import table

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import DataError
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy, TrainingStopped, make_strategy
from fedfhe_coordinator.serverapp.secure_training import SecureRecorder
from fedfhe_owner.clientapp.client_app import evaluate, train
from fedfhe_owner.clientapp.run_ledger import LEDGER, TRAINED_MODELS, refuse_replayed_model

SCHEMA = resolve_schema("digits")
FAMILY = "LogisticRegression"
NO_DATA = "no data-path set"  # what a handler that got past the check says: it went on to read the rows


def owner_context(secure: bool = False) -> Context:
    # No data-path: a handler that got past the replay check fails reading the owner's file instead.
    run_config = {fc.RUN_SECURE: True, fc.RUN_SECAGG_CLIPPING_RANGE: 8.0, fc.RUN_SECAGG_MAX_WEIGHT: 1000} \
        if secure else {}
    return Context(run_id=1, node_id=7, node_config={fc.NODE_MAX_EVALUATIONS: 100}, state=RecordDict(),
                   run_config=run_config)


def model(value: float = 0.0) -> list[np.ndarray]:
    coef, intercept = models.initial_parameters(FAMILY, SCHEMA)
    return [coef + value, intercept + value]


def instruction(server_round: int, phase: str = "") -> ConfigRecord:
    config = ConfigRecord({fc.MODEL: FAMILY, fc.MODEL_PARAMS: "{}", fc.SCHEMA_NAME: SCHEMA.name,
                           fc.N_FEATURES: SCHEMA.n_features, fc.SCHEMA_SHA256: fc.schema_sha256(SCHEMA),
                           fc.SERVER_ROUND: server_round})
    if phase:
        config[fc.PHASE] = phase
    return config


def message(params: list[np.ndarray], server_round: int, phase: str = "",
            kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({fc.CONFIG: instruction(server_round, phase), fc.ARRAYS: to_arrays(params)})
    return Message(content=content, dst_node_id=7, message_type=kind)


def secure_message(params: list[np.ndarray], server_round: int, phase: str = "") -> Message:
    """The legacy FitIns a secure run's train handler reads (what secaggplus_mod passes on)."""
    wire = to_arrays(params).to_numpy_ndarrays()
    fitins = FitIns(ndarrays_to_parameters(wire), dict(instruction(server_round, phase)))
    return Message(content=compat.fitins_to_recorddict(fitins, keep_input=True), dst_node_id=7,
                   message_type=MessageType.TRAIN)


def trained(context: Context) -> list[str]:
    record = context.state.config_records.get(LEDGER)
    return [] if record is None else list(record.get(TRAINED_MODELS, []))


def test_the_ledger_refuses_a_model_it_trained_on_and_a_new_run_starts_empty():
    context = owner_context()
    first = refuse_replayed_model(context, model(0.1), instruction(1))
    assert refuse_replayed_model(context, model(0.2), instruction(2)) != first  # a different model: accepted
    with pytest.raises(fc.InstructionRefused, match=r"^round 3: this owner already trained on this exact global "
                                                    r"model in this run \(model number 1 of 2\)"):
        refuse_replayed_model(context, model(0.1), instruction(3))
    assert trained(context) == [first, fc.model_digest(model(0.2))]  # the refused one is not recorded again
    assert refuse_replayed_model(owner_context(), model(0.1), instruction(1)) == first  # a new run: empty


def test_the_ledger_crosses_from_one_clientapp_process_to_the_next():
    """The SuperNode hands each ClientApp process the run's context as protobuf (the launcher pushes it back even
    when a handler raised): the digests must survive that trip."""
    context = owner_context()
    refuse_replayed_model(context, model(0.1), instruction(1))
    carried = context_from_proto(context_to_proto(context))
    with pytest.raises(fc.InstructionRefused, match="^round 2: "):
        refuse_replayed_model(carried, model(0.1), instruction(2))


def test_one_ulp_is_another_model_and_a_zeros_sign_is_not():
    """Only exact replays are caught (run_ledger.refuse_replayed_model says what bounds the near ones)."""
    context = owner_context()
    params = model(0.5)
    refuse_replayed_model(context, params, instruction(1))
    nudged = [params[0].copy(), params[1]]
    nudged[0][3, 7] = np.nextafter(nudged[0][3, 7], np.inf)
    refuse_replayed_model(context, nudged, instruction(2))  # accepted: a near replay is a new model here
    zeros = model()
    refuse_replayed_model(context, zeros, instruction(3))
    with pytest.raises(fc.InstructionRefused, match="^round 4: "):
        refuse_replayed_model(context, [-zeros[0], zeros[1]], instruction(4))  # -0.0: numerically the same
    with pytest.raises(fc.InstructionRefused, match="^round 5: "):
        refuse_replayed_model(context, [p.astype(np.float32) for p in zeros], instruction(5))  # same values


@pytest.mark.parametrize("phase", ["", fc.PHASE_NEWTON])
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_a_replayed_model_is_refused_before_any_row_is_read(phase, secure):
    context = owner_context(secure)
    send = secure_message if secure else message
    with pytest.raises(DataError, match=NO_DATA):  # first time: checked, recorded, then the rows are read
        train(send(model(0.1), 1, phase), context)
    with pytest.raises(fc.InstructionRefused, match=r"^round 2: this owner already trained on this exact"):
        train(send(model(0.1), 2, phase), context)
    with pytest.raises(DataError, match=NO_DATA):  # another model: accepted
        train(send(model(0.2), 3, phase), context)
    assert trained(context) == [fc.model_digest(model(0.1)), fc.model_digest(model(0.2))]


def test_statistics_carry_no_model_and_evaluate_messages_are_not_training():
    context = owner_context()
    for _ in range(2):
        with pytest.raises(DataError, match=NO_DATA):
            train(message(model(), 0, fc.PHASE_STATISTICS), context)
    assert trained(context) == []
    with pytest.raises(DataError, match=NO_DATA):
        train(message(model(0.3), 1), context)
    with pytest.raises(DataError, match=NO_DATA):  # scoring the final model: not refused, not recorded
        evaluate(message(model(0.3), 1, kind=MessageType.EVALUATE), context)
    assert trained(context) == [fc.model_digest(model(0.3))]


def test_the_coordinator_never_sends_a_model_twice(tmp_path):
    s = make_strategy("fedavg", tmp_path / "progress.jsonl", ReplyPolicy(FAMILY, SCHEMA), owner_keys={},
                      node_wait=1.0, min_nodes=2)
    grid = Grid([1, 2])
    for server_round, value in ((1, 0.0), (2, 0.1)):
        assert len(list(s.configure_train(server_round, to_arrays(model(value)), ConfigRecord({}), grid))) == 2
    with pytest.raises(TrainingStopped, match=r"^round 3 would send round 1's global model again, which owners "
                                              r"refuse \(issue 25\): training ended after round 2$") as stop:
        s.configure_train(3, to_arrays(model(0.0)), ConfigRecord({}), grid)
    assert s.stopped is stop.value and stop.value.earlier == 1 and 3 not in s.rounds  # nothing sent or started
    assert stop.value.arrays is not None and np.array_equal(stop.value.arrays.to_numpy_ndarrays()[0], model()[0])


def test_the_secure_coordinator_never_sends_a_model_twice(tmp_path):
    rec = SecureRecorder(tmp_path / "progress.jsonl", ReplyPolicy(FAMILY, SCHEMA), {}, 1.0, inner=FedAvg(),
                         min_nodes=2, max_weight=1000.0, threshold=2, score=lambda params: {})
    clients = SimpleClientManager()
    for cid in ("1", "2"):
        clients.register(SimpleNamespace(cid=cid))  # type: ignore[arg-type]
    params = ndarrays_to_parameters(to_arrays(model(0.4)).to_numpy_ndarrays())
    assert len(rec.configure_fit(1, params, clients)) == 2
    with pytest.raises(TrainingStopped, match="^round 2 would send round 1's global model again"):
        rec.configure_fit(2, params, clients)
    assert rec.stopped is not None and 2 not in rec.rounds


def test_ridge_under_fedavg_repeats_its_model_in_round_3_so_training_ends_after_round_2(tmp_path):
    """The honest resend the coordinator's stop is for: Ridge refits from scratch, whatever model it gets."""
    X, y, schema = table("diabetes")
    s = make_strategy("fedavg", tmp_path / "progress.jsonl", ReplyPolicy("Ridge", schema), owner_keys={},
                      node_wait=1.0, min_nodes=3)
    grid = Grid([1, 2, 3])
    arrays = to_arrays(models.initial_parameters("Ridge", schema))
    parts = np.array_split(np.arange(len(y)), 3)
    for server_round in (1, 2):
        sent = list(grid.push(list(s.configure_train(server_round, arrays, ConfigRecord({}), grid))))
        replies = []
        for msg, rows in zip(sent, parts, strict=True):
            ridge = models.build("Ridge", models.default_params("Ridge"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models.local_fit(ridge, "Ridge", X[rows], y[rows], schema)
            scores = metrics(**{"num-examples": len(rows)})
            scores["eval-r2"] = scores.pop("eval-accuracy")
            replies.append(Message(RecordDict({fc.ARRAYS: to_arrays(models.get_parameters(ridge, "Ridge", schema)),
                                               fc.METRICS: MetricRecord(scores)}), reply_to=msg))
        arrays, _ = s.aggregate_train(server_round, replies)
    with pytest.raises(TrainingStopped, match="^round 3 would send round 2's global model again"):
        s.configure_train(3, arrays, ConfigRecord({}), grid)
