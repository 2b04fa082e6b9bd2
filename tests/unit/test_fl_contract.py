"""Every hostile reply from issue 11 is refused, named after the registered owner, and kept out of the aggregate.

Unit level: fl_contract's checks, and the ServerApp's strategy fed real-shaped
replies through a fake grid (tests/unit/test_node_loss.py has the grid).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.aggregation import AGGREGATIONS, strategy_kwargs
from fedfhe_coordinator.serverapp.rounds import ReplyPolicy, clip_update, make_strategy

SCHEMA = resolve_schema("digits")
FAMILY = "LogisticRegression"
CAP = 1000


def metrics(**over: object) -> dict:
    base = {"num-examples": 100, "fit-seconds": 0.1, "eval-examples": 20, "eval-seconds": 0.01,
            "eval-accuracy": 0.9, "eval-loss": 0.3}
    return {**base, **over}


def content(params: list[np.ndarray] | None = None, **over: object) -> RecordDict:
    params = params if params is not None else models.initial_parameters(FAMILY, SCHEMA)
    return RecordDict({"arrays": to_arrays(params), "metrics": MetricRecord(metrics(**over))})


def coef(value: float) -> list[np.ndarray]:
    c, i = models.initial_parameters(FAMILY, SCHEMA)
    return [c + value, i + value]


def test_a_good_reply_passes_with_model_shapes():
    reply = fc.check_reply(content(coef(0.5)), "train", FAMILY, SCHEMA, CAP)
    assert reply.params[0].shape == (10, 64) and reply.metrics["num-examples"] == 100


@pytest.mark.parametrize(("record", "reason"), [
    (lambda: content(**{"num-examples": 10**12}), "num-examples is 1000000000000, above this owner's cap of 1000"),
    (lambda: content(**{"num-examples": -5}), "num-examples must be positive"),
    (lambda: content(**{"num-examples": 0}), "num-examples must be positive"),
    (lambda: content(**{"num-examples": 1.5}), "num-examples must be an integer"),
    (lambda: content(coef(float("nan"))), "coef has non-finite values"),
    (lambda: content(coef(float("inf"))), "non-finite"),
    (lambda: content(coef(1e300)), "coef has values beyond +-1e+12"),
    (lambda: RecordDict({"arrays": ArrayRecord([np.zeros(1), np.zeros(1)]), "metrics": MetricRecord(metrics())}),
     "coef has shape (1,), the run needs (10, 64)"),
    (lambda: RecordDict({"arrays": ArrayRecord([np.zeros((10, 64))]), "metrics": MetricRecord(metrics())}),
     "expected 2 parameter arrays"),
    (lambda: content(**{"eval-accuracy": [1.0, 1.0]}), "eval-accuracy must be a number, got list"),
    (lambda: content(**{"eval-bogus": 0.5}), "unexpected metric(s) 'eval-bogus'"),
    (lambda: content(**{"eval-examples": 10**9}), "eval-examples is 1000000000, above this owner's cap"),
    (lambda: content(**{"eval-accuracy": 7.0}), "eval-accuracy must lie in [0, 1]"),
    (lambda: RecordDict({"metrics": MetricRecord(metrics())}), "missing record(s) arrays"),
])
def test_hostile_replies_are_refused_with_the_reason(record, reason):
    with pytest.raises(fc.ReplyRejected) as err:
        fc.check_reply(record(), "train", FAMILY, SCHEMA, CAP)
    assert reason in str(err.value)


def test_a_spoofed_owner_record_is_refused():
    rec = content()
    rec["owner"] = ConfigRecord({"owner-id": "owner-0"})
    with pytest.raises(fc.ReplyRejected, match="unexpected record"):
        fc.check_reply(rec, "train", FAMILY, SCHEMA, CAP)


def test_evaluate_replies_carry_metrics_only():
    rec = RecordDict({"metrics": MetricRecord({k: v for k, v in metrics().items() if k != "fit-seconds"})})
    assert fc.check_reply(rec, "evaluate", FAMILY, SCHEMA, CAP).params is None


# ---- the strategy: hostile replies are failures of the registered owner, the aggregate is the honest one ----

@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def get_nodes(self) -> list:
        return [SimpleNamespace(node_id=n, public_key=f"key-{n}".encode(), name="") for n in self.nodes]

    def push(self, messages: list[Message]) -> list[Message]:
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        return messages


def run_round(tmp_path, hostile: RecordDict, aggregation: str = "fedavg", clip: float = 0.0, **kw):
    nodes = [1, 2, 3, 4, 5]
    keys = {fc.owner_key_id(f"key-{n}".encode()): f"owner-{n}" for n in nodes}
    s = make_strategy(aggregation, tmp_path / "progress.jsonl", ReplyPolicy(FAMILY, SCHEMA, CAP, clip_norm=clip),
                      owner_keys=keys, node_wait=1.0, min_nodes=4, **kw)
    grid = Grid(nodes)
    start = to_arrays(models.initial_parameters(FAMILY, SCHEMA))
    sent = {m.metadata.dst_node_id: m for m in grid.push(s.configure_train(1, start, ConfigRecord({}), grid))}
    replies = [Message(content(coef(0.1 * n)), reply_to=sent[n]) for n in (1, 2, 3, 4)]
    replies.append(Message(hostile, reply_to=sent[5]))
    arrays, _ = s.aggregate_train(1, replies)
    s.flush(1)
    row = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[0])
    return arrays.to_numpy_ndarrays()[0], row


@pytest.mark.parametrize("hostile", [
    content(coef(100.0), **{"num-examples": 10**12}),
    content(coef(100.0), **{"num-examples": -1}),
    content(coef(float("nan"))),
    RecordDict({"arrays": ArrayRecord([np.full(1, 1e6), np.zeros(1)]), "metrics": MetricRecord(metrics())}),
    content(**{"eval-accuracy": [1.0]}),
    content(**{"eval-extra": 1.0}),
    content(**{"eval-examples": 10**9, "eval-accuracy": 0.0}),
], ids=["1e12-rows", "negative-rows", "nan", "shape-(1,)", "list-metric", "extra-eval-key", "huge-eval-examples"])
def test_a_hostile_reply_is_its_owners_failure_and_leaves_the_aggregate_alone(tmp_path, hostile):
    hostile["owner"] = ConfigRecord({"owner-id": "owner-1"})  # claims to be someone else
    coef_, row = run_round(tmp_path, hostile)
    assert np.allclose(coef_, 0.25)  # the mean of the four honest owners' 0.1..0.4
    assert row["fit_owners"] == ["owner-1", "owner-2", "owner-3", "owner-4"]
    (failure,) = row["failures"]
    assert failure["owner"] == "owner-5" and failure["reason"].startswith("reply refused: ")


def test_scores_come_from_honest_replies_only(tmp_path):
    from fedfhe_coordinator.serverapp.rounds import client_scores

    replies = [Message(content(**{"eval-accuracy": 0.8}), reply_to=Message(RecordDict(), dst_node_id=1,
                                                                           message_type="train"))]
    assert client_scores(replies)["accuracy"] == pytest.approx(0.8)


@pytest.mark.parametrize("aggregation", [a for a in AGGREGATIONS if a not in ("auto", "newton")])
def test_every_aggregation_records_the_round_and_withstands_scaled_updates(tmp_path, aggregation):
    kw = {"num_malicious_nodes": 0} if aggregation == "bulyan" else {}
    coef_, row = run_round(tmp_path, content(coef(-40.0)), aggregation, **kw)
    assert row["fit_owners"] == [f"owner-{n}" for n in range(1, 6)] and row["failures"] == []
    if aggregation in ("fedmedian", "krum", "multikrum"):
        assert 0.1 <= float(coef_.mean()) <= 0.4


def test_clipping_bounds_each_update(tmp_path):
    ref = models.initial_parameters(FAMILY, SCHEMA)
    clipped = clip_update(coef(3.0), ref, 1.0)
    norm = np.sqrt(sum(float(np.sum(c * c)) for c in clipped))
    assert norm == pytest.approx(1.0)
    coef_, _ = run_round(tmp_path, content(coef(-40.0)), clip=0.5)
    assert float(coef_.mean()) > 0  # the sign-flipped, scaled update no longer outweighs the honest ones


@pytest.mark.parametrize(("kw", "message"), [
    ({"name": "krum", "num_malicious_nodes": 2}, "needs min_nodes >= 7"),
    ({"name": "bulyan", "num_malicious_nodes": 1}, "needs min_nodes >= 7"),
    ({"name": "fedtrimmedavg", "trimmed_fraction": 0.5}, "trimmed_fraction"),
    ({"name": "multikrum", "multikrum_select": 9}, "multikrum_select"),
    ({"name": "median"}, "must be one of"),
])
def test_aggregation_parameters_are_checked(kw, message):
    name = kw.pop("name")
    with pytest.raises(ConfigError, match=message):
        strategy_kwargs(name, 5, **kw)


def coordinator(tmp_path, **training: object):
    from fedfhe_common.runtime.config import from_dict
    from fedfhe_coordinator.config import CoordinatorConfig

    data = {"superlink": {"certfile": "a", "keyfile": "b", "ca_certfile": "c"}, "state_dir": "s", "release_key": "k",
            "supernode_public_keys": ["pki/alice.supernode.pub", "pki/bob.supernode.pub"],
            "training": {"output_dir": "o", **training}}
    return from_dict(CoordinatorConfig, data, base=tmp_path)


def test_caps_per_run_and_per_owner(tmp_path):
    assert coordinator(tmp_path).training.caps() == (fc.DEFAULT_MAX_EXAMPLES, {})
    assert coordinator(tmp_path, max_examples_per_owner=500).training.caps() == (500, {})
    cfg = coordinator(tmp_path, max_examples_per_owner={"default": 300, "alice": 900})
    assert cfg.training.caps() == (300, {"alice": 900})
    with pytest.raises(ConfigError, match="carol not among the owners"):
        coordinator(tmp_path, max_examples_per_owner={"carol": 5})
    with pytest.raises(ConfigError, match="must be a positive number of rows"):
        coordinator(tmp_path, max_examples_per_owner={"alice": 0})
    with pytest.raises(ConfigError, match="needs min_nodes >= 7"):
        coordinator(tmp_path, aggregation="bulyan", num_malicious_nodes=1, min_nodes=5)
    with pytest.raises(ConfigError, match="clip_norm"):
        coordinator(tmp_path, clip_norm=-1.0)


def test_owner_keys_match_the_key_flower_registers(tmp_path):
    """The ServerApp sees the key Flower stored at `flwr supernode register`; the id must match it."""
    from flwr.cli.supernode.register import try_load_public_key

    from fedfhe_common.pki.ca import init_ca, supernode_keypair
    from fedfhe_coordinator.run_config import owner_keys

    init_ca(tmp_path)
    supernode_keypair(tmp_path, "alice")
    key = tmp_path / "alice.supernode.pub"
    assert owner_keys([key]) == {fc.owner_key_id(try_load_public_key(key)): "alice"}


def test_one_owners_share_of_the_weight_is_capped_against_the_median_of_the_others(tmp_path):
    """Issue 25: one owner claiming 1,000 rows (within its cap) against four of 100 would hold 71% of the
    weight; with training.max_owner_share 0.5 its count is cut to the others' median times their number."""
    from fedfhe_coordinator.serverapp.rounds import cap_shares

    assert cap_shares([100, 100, 100, 100, 1000], 0.5) == [100, 100, 100, 100, 400]
    assert cap_shares([100, 100, 1000], 0.0) == [100, 100, 1000]  # off
    # The order never inverts, and no owner ends above the share (a per-owner cap against the others' raw
    # counts gave [47, 60, 50] here, the 60-row owner then holding 38%; and 49.6% each for [1000, 1000, 10]).
    for counts, share in (([100, 60, 50], 0.34), ([1000, 1000, 10], 0.4), ([10**6] + [115] * 9, 0.5),
                          ([100, 120, 90, 1000, 1000], 0.3)):
        capped = cap_shares(counts, share)
        assert max(capped) <= share * sum(capped) + 1e-9, (counts, capped)
        pairs = [(i, j) for i in range(len(counts)) for j in range(len(counts)) if counts[i] > counts[j]]
        assert all(capped[i] >= capped[j] for i, j in pairs), (counts, capped)
    hostile = content(coef(-40.0), **{"num-examples": 1000})
    nodes = [1, 2, 3, 4, 5]
    keys = {fc.owner_key_id(f"key-{n}".encode()): f"owner-{n}" for n in nodes}
    s = make_strategy("fedavg", tmp_path / "progress.jsonl", ReplyPolicy(FAMILY, SCHEMA, CAP, max_share=0.5),
                      owner_keys=keys, node_wait=1.0, min_nodes=4)
    grid = Grid(nodes)
    start = to_arrays(models.initial_parameters(FAMILY, SCHEMA))
    sent = {m.metadata.dst_node_id: m for m in grid.push(s.configure_train(1, start, ConfigRecord({}), grid))}
    replies = [Message(content(coef(1.0)), reply_to=sent[n]) for n in (1, 2, 3, 4)]
    replies.append(Message(hostile, reply_to=sent[5]))
    arrays, _ = s.aggregate_train(1, replies)
    s.flush(1)
    row = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[0])
    share = 400 / 800
    assert np.allclose(arrays.to_numpy_ndarrays()[0], (1 - share) * 1.0 + share * -40.0)
    assert row["capped"] == {"owner-5": [1000, 400]} and row["fit_rows"] == 800


@pytest.mark.parametrize("share", [1.0, -0.1, 1.5, 0.2])  # 0.2: below 1 / min_nodes (2, the default)
def test_a_max_owner_share_outside_0_1_is_refused_naming_the_key(tmp_path, share):
    with pytest.raises(ConfigError, match="training.max_owner_share"):
        coordinator(tmp_path, max_owner_share=share)
