"""The data owner's side of secure aggregation: Flower's secaggplus_mod (and DP clipping) when the run asks for it.

The coordinator's run config says whether a run is secure (fl_contract.RUN_SECURE).
In a secure run every train message goes through Flower's own ``secaggplus_mod``
(four exchanges: keys, key shares, the masked update, unmasking shares), and,
when the run adds differential privacy, through Flower's ``fixedclipping_mod``
first. fedfhe writes no masking or secret sharing: it only checks the setup the
coordinator proposes and bounds its own update before Flower masks it.

The ClientApp's train handler turns into a legacy one (FitIns in, FitRes out)
because that is the format the 1.39 SecAgg+ mod reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage

from fedfhe_common import fl_contract as fc

Handler = Callable[[Message, Context], Message]


def is_secure(context: Context) -> bool:
    return bool(context.run_config.get(fc.RUN_SECURE, False))


def uses_dp(context: Context) -> bool:
    return is_secure(context) and float(context.run_config.get(fc.RUN_DP_NOISE_MULTIPLIER, 0.0)) > 0


def _checked_stage(msg: Message, context: Context) -> None:
    """Refuse a SecAgg+ setup or unmask request that would let the coordinator unmask one owner
    (fl_contract.check_secagg_setup, check_secagg_unmask), before Flower's mod acts on it."""
    try:
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    except KeyError:
        raise fc.InstructionRefused("a secure run's train message without SecAgg+ configs") from None
    stage = configs.get(Key.STAGE)
    if stage == Stage.SETUP:
        fc.check_secagg_setup(configs.get(Key.SHARE_NUMBER), configs.get(Key.THRESHOLD),
                              configs.get(Key.SAMPLE_NUMBER), int(context.node_config.get(fc.NODE_MIN_OWNERS, 2)))
    elif stage == Stage.UNMASK:
        record = context.state.config_records.get(RECORD_KEY_STATE)
        if record is None:
            raise fc.InstructionRefused("SecAgg+ unmask before this owner's setup")
        state = SecAggPlusState(**record)
        fc.check_secagg_unmask(configs.get(Key.ACTIVE_NODE_ID_LIST), configs.get(Key.DEAD_NODE_ID_LIST),
                               set(state.rd_seed_share_dict) & set(state.sk1_share_dict), int(state.threshold))


def privacy_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """A Flower mod: SecAgg+ (and DP clipping) around the train handler in a secure run, nothing otherwise."""
    if not is_secure(context):
        if msg.metadata.message_type == "train" and context.node_config.get(fc.NODE_REQUIRE_SECURE, False) is True:
            raise fc.InstructionRefused("this owner trains only under secure aggregation (owner.yaml "
                                        "privacy.require_secure_aggregation); the run asked for plain mode")
        return call_next(msg, context)
    _checked_stage(msg, context)
    inner = call_next
    if uses_dp(context):
        def inner(m: Message, c: Context) -> Message:
            if _statistics_phase(m):  # fractions in [0, 1], not a model update: no clipping relative to a model
                return call_next(m, c)
            return fixedclipping_mod(m, c, call_next)
    return secaggplus_mod(msg, context, inner)


def _statistics_phase(msg: Message) -> bool:
    from flwr.compat.common.recorddict_compat import recorddict_to_fitins

    try:
        return str(recorddict_to_fitins(msg.content, keep_input=True).config.get(fc.PHASE, "")) == \
            fc.PHASE_STATISTICS
    except Exception:  # noqa: BLE001 - not a FitIns: the train handler refuses it
        return False


def bound_update(params: list[np.ndarray], n_rows: int, context: Context) -> tuple[list[np.ndarray], int]:
    """What SecAgg+ may carry from this owner: parameters within +-clipping_range, weight at most max_weight.

    Flower multiplies the parameters by ``weight / max_weight`` and quantises them
    within the clipping range, silently clipping what lies outside and overflowing
    when the weight exceeds max_weight. The owner caps both here, so its influence on
    the sum is bounded by what the run declared, and it reports the weight it used.
    """
    clipping_range = float(context.run_config[fc.RUN_SECAGG_CLIPPING_RANGE])
    max_weight = float(context.run_config[fc.RUN_SECAGG_MAX_WEIGHT])
    weight = max(1, min(int(n_rows), int(max_weight)))
    return [np.clip(p, -clipping_range, clipping_range) for p in params], weight


def legacy_reply(msg: Message, params: list[np.ndarray], weight: int, metrics: dict[str, float]) -> Message:
    """The FitRes that secaggplus_mod masks: parameters (cleared after masking), weight and metrics."""
    from flwr.compat.common import recorddict_compat as compat

    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(params), weight, dict(metrics))
    return Message(content=compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def record_true_update(context: Context, owner: str, server_round: int, params: list[np.ndarray],
                       weight: int) -> None:
    """Test federations only (node config ``test-record-updates``): keep what this owner masks, on its host."""
    folder = str(context.node_config.get(fc.TEST_RECORD_UPDATES, ""))
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{owner}-round{server_round}.npz", weight=np.array(weight),
             **{f"p{i}": np.asarray(p, dtype=np.float64) for i, p in enumerate(params)})
