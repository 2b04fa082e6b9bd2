"""SecAgg+'s unmask stage: an owner hands out one kind of share per neighbour, never both (issue 25).

A hostile coordinator lists a victim as both active and dead; Flower 1.39's ``secaggplus_mod`` alone
returns both of the victim's shares (the first test shows it), which unmasks the victim's update. The
owner's privacy_mod refuses before Flower's mod runs. Flower's real mod and state are used throughout.
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_owner.clientapp.secure_client import privacy_mod

NEIGHBOURS = (11, 22, 33)
VICTIM = 33


@pytest.fixture(autouse=True)
def _identity(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 11), ("_task_id", 9)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _owner_after_masking(node_config: dict | None = None) -> Context:
    """Owner 11 as Flower's mod leaves it after the masked-vector stage: one share of each kind per neighbour."""
    state = SecAggPlusState(current_stage=Stage.COLLECT_MASKED_VECTORS, nid=11, sample_num=3, share_num=3,
                            threshold=2)
    state.rd_seed_share_dict = {n: f"seed-share-of-{n}".encode() for n in NEIGHBOURS}
    state.sk1_share_dict = {n: f"key-share-of-{n}".encode() for n in NEIGHBOURS}
    context = Context(run_id=1, node_id=11, node_config=node_config or {}, state=RecordDict(),
                      run_config={fc.RUN_SECURE: True})
    context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
    return context


def _next_round(context: Context) -> Context:
    """The same owner's context in the run's next round, after masking again: its ledger kept."""
    context.state.config_records[RECORD_KEY_STATE] = _owner_after_masking().state.config_records[RECORD_KEY_STATE]
    return context


def _unmask(active: list[int], dead: list[int]) -> Message:
    configs = ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: dead})
    return Message(content=RecordDict({RECORD_KEY_CONFIGS: configs}), dst_node_id=11,
                   message_type=MessageType.TRAIN)


def _shares(reply: Message) -> dict[int, bytes]:
    configs = reply.content.config_records[RECORD_KEY_CONFIGS]
    return dict(zip(configs[Key.NODE_ID_LIST], configs[Key.SHARE_LIST], strict=True))


def _never(msg: Message, context: Context) -> Message:
    raise AssertionError("the train handler runs only at the masked-vector stage")


def test_flower_alone_hands_out_both_shares_of_a_node_on_both_lists():
    """The attack, on Flower's own mod: if this fails, Flower checks it itself."""
    reply = secaggplus_mod(_unmask([11, 22, VICTIM], [VICTIM]), _owner_after_masking(), _never)
    assert [s for s in reply.content.config_records[RECORD_KEY_CONFIGS][Key.SHARE_LIST] if b"of-33" in s] == \
        [b"seed-share-of-33", b"key-share-of-33"]


@pytest.mark.parametrize("active,dead,reason", [
    ([11, 22, VICTIM], [VICTIM], "listed as both active and dead"),
    ([11, 22], [44], "not neighbours of this round's setup"),
    ([11, 22, 22], [], "names a node twice"),
    ([11], [22, VICTIM], "fewer than the threshold"),
    ([11, 22], [True], "must be a list of node ids"),
])
def test_the_owner_refuses_before_any_share_leaves(active, dead, reason):
    context = _owner_after_masking()
    before = dict(context.state.config_records[RECORD_KEY_STATE])
    with pytest.raises(fc.InstructionRefused, match=reason):
        privacy_mod(_unmask(active, dead), context, _never)
    assert dict(context.state.config_records[RECORD_KEY_STATE]) == before  # Flower's mod never ran


def test_an_honest_unmask_goes_through_flowers_mod():
    reply = privacy_mod(_unmask([11, 22], [VICTIM]), _owner_after_masking(), _never)
    assert _shares(reply) == {11: b"seed-share-of-11", 22: b"seed-share-of-22", VICTIM: b"key-share-of-33"}


def _setup(owners: int, threshold: int) -> Message:
    configs = ConfigRecord({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: owners, Key.SHARE_NUMBER: owners,
                            Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 22,
                            Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 1000.0})
    return Message(content=RecordDict({RECORD_KEY_CONFIGS: configs}), dst_node_id=11,
                   message_type=MessageType.TRAIN)


def _owner(secure: bool, **policy: object) -> Context:
    node = {fc.NODE_REQUIRE_SECURE: policy.get("require", False), fc.NODE_MIN_OWNERS: policy.get("min_owners", 3)}
    return Context(run_id=1, node_id=11, node_config=node, state=RecordDict(), run_config={fc.RUN_SECURE: secure})


def test_a_two_owner_round_is_refused_by_the_default_policy():
    with pytest.raises(fc.InstructionRefused, match="at least 3 owners .*privacy.min_owners_per_round"):
        privacy_mod(_setup(2, 2), _owner(True), _never)
    reply = privacy_mod(_setup(3, 2), _owner(True), _never)  # three owners, strict majority: Flower's setup runs
    assert Key.PUBLIC_KEY_1 in reply.content.config_records[RECORD_KEY_CONFIGS]
    privacy_mod(_setup(2, 2), _owner(True, min_owners=2), lambda m, c: m)  # an owner who allows two


def test_an_owner_that_requires_secure_aggregation_refuses_a_plain_run():
    plain = Message(content=RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    with pytest.raises(fc.InstructionRefused, match="only under secure aggregation"):
        privacy_mod(plain, _owner(False, require=True), _never)
    assert privacy_mod(plain, _owner(False), lambda m, c: m) is plain  # the default policy lets plain runs through


def test_owner_yaml_privacy_section_reaches_the_clientapp(tmp_path):
    from fedfhe_owner.config import OwnerConfig, PrivacyPolicy
    from fedfhe_owner.supernode.launch import node_config

    cfg = OwnerConfig(owner_id="o", superlink="127.0.0.1:1", root_certificates=tmp_path, auth_key=tmp_path,
                      data=tmp_path / "d.csv", state_dir=tmp_path,
                      privacy=PrivacyPolicy(require_secure_aggregation=True, min_owners_per_round=5))
    text = node_config(cfg)
    assert f"{fc.NODE_REQUIRE_SECURE}=true" in text and f"{fc.NODE_MIN_OWNERS}=5" in text
    assert f"{fc.NODE_MAX_EVALUATIONS}=100" in text  # the default


@pytest.mark.parametrize("first,later", [
    ([11, 22, VICTIM], [11, 22]),  # a round without the victim: its update is the difference of the two sums
    ([11, 22], [11, 22, VICTIM]),  # the victim joins later: the same difference, in the other order
    ([11, 22, VICTIM], [11, VICTIM]),  # another owner dropped
])
def test_a_sum_over_other_owners_than_the_runs_first_is_refused(first, later):
    """The fixed-membership rule (run_ledger.check_fixed_membership): every sum of a run is over the same owners."""
    context = _owner_after_masking()
    dead = sorted(set(NEIGHBOURS) - set(first))
    privacy_mod(_unmask(first, dead), context, _never)  # the run's first sum fixes the owners
    privacy_mod(_unmask(first, dead), _next_round(context), _never)  # the same owners again: served
    _next_round(context)
    before = dict(context.state.config_records[RECORD_KEY_STATE])
    with pytest.raises(fc.InstructionRefused, match="over other owners than this run's first secure sum"):
        privacy_mod(_unmask(later, sorted(set(NEIGHBOURS) - set(later))), context, _never)
    assert dict(context.state.config_records[RECORD_KEY_STATE]) == before  # no share left: Flower's mod never ran


def test_a_new_run_starts_a_new_membership():
    """Flower starts context.state empty for each run, so the ledger is per run (two runs: docs/security.md)."""
    privacy_mod(_unmask([11, 22, VICTIM], []), _owner_after_masking(), _never)
    privacy_mod(_unmask([11, 22], [VICTIM]), _owner_after_masking(), _never)


def test_a_sum_over_fewer_than_the_owners_minimum_is_refused():
    """Three owners set up the round, one is declared dead: a sum of two, below the owner's minimum of 3."""
    context = _owner_after_masking({fc.NODE_MIN_OWNERS: 3})
    with pytest.raises(fc.InstructionRefused, match="sum would be over 2 owner.*at least 3 owners"):
        privacy_mod(_unmask([11, 22], [VICTIM]), context, _never)
    privacy_mod(_unmask([11, 22, VICTIM], []), _owner_after_masking({fc.NODE_MIN_OWNERS: 3}), _never)


def test_a_partial_share_graph_is_refused_at_setup():
    """With fewer shares than owners an owner sees only its neighbours' part of the active list."""
    setup = _setup(5, 3)
    setup.content.config_records[RECORD_KEY_CONFIGS][Key.SHARE_NUMBER] = 3
    with pytest.raises(fc.InstructionRefused, match="3 shares for 5 owners.*num_shares: 0"):
        privacy_mod(setup, _owner(True), _never)
