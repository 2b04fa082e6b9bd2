"""The data owner's side of privacy: Flower's secaggplus_mod (and DP clipping) when the run asks for it, and
Flower's LocalDpMod when the owner does.

The coordinator's run config says whether a run is secure (fl_contract.RUN_SECURE).
In a secure run every train message goes through Flower's own ``secaggplus_mod``
(four exchanges: keys, key shares, the masked update, unmasking shares), and,
when the run adds central differential privacy, through Flower's ``fixedclipping_mod``
first. fedfhe writes no masking or secret sharing: it only checks the setup the
coordinator proposes and bounds its own update before Flower masks it.

Local differential privacy is the owner's choice (owner.yaml ``privacy.local_dp``,
node config ``fl_contract.NODE_LOCAL_DP``), so no run config turns it off. Flower
1.39 ships two ``LocalDpMod`` classes with one mechanism (the update relative to
the received model clipped to ``clipping_norm``, then Gaussian noise of standard
deviation ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` on every
parameter): ``flwr.clientapp.mod.LocalDpMod`` reads the Message API (exactly one
ArrayRecord in the instruction and in the reply, with the same keys), which is a
plain run's train message; ``flwr.client.mod.LocalDpMod`` reads legacy FitIns and
FitRes, which is what a secure run's handler sees inside ``secaggplus_mod``: there
it runs in the mod's inner call, so the noise is added before the update is masked.
Each applies to model updates only: the statistics phase's fractions are not a
model (a plain statistics instruction carries no ArrayRecord at all), and newton's
gradient and Hessian are refused (``refuse_newton_under_local_dp``).

The ClientApp's train handler turns into a legacy one (FitIns in, FitRes out)
because that is the format the 1.39 SecAgg+ mod reads and writes.

Held-out scores in a secure run leave the owner only inside the masked sum
(``seal_scores``, layout and scaling in ``fedfhe_common.ml.score_sums``): the last
layer before ``secaggplus_mod`` moves them from the FitRes's clear metrics into
one array appended to its parameters, after the DP mods (their clipping and
noise are for the model update, and the appended array is no update).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import LocalDpMod as LegacyLocalDpMod
from flwr.client.mod import fixedclipping_mod, make_ffn, secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.clientapp.mod import LocalDpMod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.compat.common.recorddict_compat import recorddict_to_fitins

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.ml import score_sums
from fedfhe_common.ml.models import FEDERATED_TREES
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_owner.clientapp import run_ledger

Handler = Callable[[Message, Context], Message]


def is_secure(context: Context) -> bool:
    return bool(context.run_config.get(fc.RUN_SECURE, False))


def uses_dp(context: Context) -> bool:
    return is_secure(context) and float(context.run_config.get(fc.RUN_DP_NOISE_MULTIPLIER, 0.0)) > 0


def _checked_stage(msg: Message, context: Context) -> None:
    """Refuse a SecAgg+ setup or unmask request that would let the coordinator unmask one owner
    (fl_contract.check_secagg_setup, check_secagg_unmask) or separate it by differencing sums
    (run_ledger.check_fixed_membership), before Flower's mod acts on it."""
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
        active = configs.get(Key.ACTIVE_NODE_ID_LIST)
        fc.check_secagg_unmask(active, configs.get(Key.DEAD_NODE_ID_LIST),
                               set(state.rd_seed_share_dict) & set(state.sk1_share_dict), int(state.threshold))
        run_ledger.check_fixed_membership(context, active, int(context.node_config.get(fc.NODE_MIN_OWNERS, 2)))


def local_dp(context: Context) -> dict[str, float] | None:
    """The owner's local DP settings from its node config (LocalDpMod's arguments), or None when it is off.

    All four keys or none: a node config that sets some is refused rather than run without the noise.
    """
    node = context.node_config
    given = [key for key in fc.NODE_LOCAL_DP if key in node]
    if not given:
        return None
    if len(given) < len(fc.NODE_LOCAL_DP):
        missing = ", ".join(key for key in fc.NODE_LOCAL_DP if key not in node)
        raise ConfigError(f"this owner's node config sets local DP without {missing}: start the SuperNode with "
                          "`fedfhe-owner supernode` from owner.yaml privacy.local_dp")
    values = {}
    for key, arg in zip(fc.NODE_LOCAL_DP, ("clipping_norm", "epsilon", "delta", "sensitivity"), strict=True):
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"node config {key} must be a number, got {value!r}")
        values[arg] = float(value)
    if not (values["clipping_norm"] > 0 and values["epsilon"] > 0 and 0 < values["delta"] < 1
            and values["sensitivity"] > 0):
        raise ConfigError(f"node config local DP out of range: {values} (owner.yaml privacy.local_dp)")
    return values


def refuse_newton_under_local_dp() -> fc.InstructionRefused:
    """Newton's reply is this owner's mean gradient, Hessian and loss at the received model, not a model update.

    LocalDpMod clips "the update relative to the received model", which these terms are not (not even of its
    shapes), and its noise on a Hessian breaks what the step needs: a sum of noisy Hessians is indefinite
    whenever the noise outweighs the curvature, the coordinator refuses an indefinite Hessian in a plain run
    and an indefinite average in a secure one, and a noisy positive one still steps the wrong way. A DP Newton
    would need its own calibration (a gradient's and a Hessian's sensitivity per row), not Flower's mod, so
    an owner with local DP takes part in FedAvg-style rounds only.
    """
    return fc.InstructionRefused(
        "this owner adds local differential-privacy noise to its model updates (owner.yaml privacy.local_dp); "
        "newton's gradient and Hessian are not a model update and do not survive the noise: run with "
        "training.aggregation fedavg (or fedavgm)")


def _plain_phase(msg: Message) -> str:
    config = msg.content.config_records.get(fc.CONFIG)
    return str(config.get(fc.PHASE, "")) if config is not None else ""


def _plain_model(msg: Message) -> str:
    config = msg.content.config_records.get(fc.CONFIG)
    return str(config.get(fc.MODEL, "")) if config is not None else ""


def _fitins_phase(msg: Message) -> str:
    try:
        return str(recorddict_to_fitins(msg.content, keep_input=True).config.get(fc.PHASE, ""))
    except Exception:  # noqa: BLE001 - not a FitIns: the train handler refuses it
        return ""


def privacy_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """A Flower mod: SecAgg+ (and DP clipping) around the train handler in a secure run, and the owner's local DP."""
    dp = local_dp(context) if msg.metadata.message_type == "train" else None
    if not is_secure(context):
        if msg.metadata.message_type == "train" and context.node_config.get(fc.NODE_REQUIRE_SECURE, True) is not False:
            raise fc.InstructionRefused("this owner trains only under secure aggregation (owner.yaml "
                                        "privacy.require_secure_aggregation); the run asked for plain mode")
        if dp is None or _plain_phase(msg) == fc.PHASE_STATISTICS:  # fractions in [0, 1], not a model update
            return call_next(msg, context)
        if _plain_phase(msg) == fc.PHASE_NEWTON:
            raise refuse_newton_under_local_dp()
        if _plain_model(msg) in FEDERATED_TREES:
            raise fc.InstructionRefused(
                "this owner adds local differential-privacy noise to its model updates (owner.yaml "
                "privacy.local_dp); a booster's JSON trees cannot carry that noise, so a boosting run is refused")
        return LocalDpMod(**dp)(msg, context, call_next)
    _checked_stage(msg, context)
    mods = []
    if dp is not None:  # outermost of the two: the last to touch the parameters before secaggplus_mod masks them
        mods.append(LegacyLocalDpMod(**dp))
    if uses_dp(context):
        mods.append(fixedclipping_mod)
    inner = call_next
    if mods:
        clipped = make_ffn(call_next, mods)

        def inner(m: Message, c: Context) -> Message:
            phase = _fitins_phase(m)
            if phase == fc.PHASE_STATISTICS:  # fractions in [0, 1], not a model update: no clipping, no noise
                return call_next(m, c)
            if dp is not None and phase == fc.PHASE_NEWTON:
                raise refuse_newton_under_local_dp()
            return clipped(m, c)
    return secaggplus_mod(msg, context, _sealing(inner))


def _sealing(call_next: Handler) -> Handler:
    """``call_next`` (the handler, inside the DP mods) with its held-out scores moved into the masked vector."""

    def sealed(msg: Message, context: Context) -> Message:
        reply = call_next(msg, context)
        if reply.has_error() or _fitins_phase(msg) == fc.PHASE_STATISTICS:  # fractions and a weight: no score
            return reply
        return seal_scores(reply, context)

    return sealed


def seal_scores(reply: Message, context: Context) -> Message:
    """The FitRes that secaggplus_mod masks, with this owner's held-out scores inside its parameters only.

    Its clear metrics keep the weight (num-examples, already capped at max_weight and needed by Flower to
    weigh the sum) and fit-seconds: the time of the local fit depends on the training rows, whose count
    is the clear weight, and the owner's hardware, and the coordinator times each reply's arrival anyway;
    eval-seconds would time the held-out rows, so it goes. The scores and their row count become one
    array (score_sums.pack) divided by the factor Flower multiplies parameters by, so that the masked
    vector carries the array itself. The factors are the ones of this round's SecAgg+ setup, refused
    unless they are the run config's (a setup with another max_weight or clipping range for this owner
    would scale its array apart from the others').
    """
    record = context.state.config_records.get(RECORD_KEY_STATE)
    if record is None:
        raise fc.InstructionRefused("SecAgg+ masked vector before this owner's setup")
    state = SecAggPlusState(**record)
    run = context.run_config
    for name, used, key in (("max_weight", state.max_weight, fc.RUN_SECAGG_MAX_WEIGHT),
                            ("clipping range", state.clipping_range, fc.RUN_SECAGG_CLIPPING_RANGE)):
        if key in run and float(run[key]) != float(used):
            raise fc.InstructionRefused(f"SecAgg+ setup: {name} {used} differs from the run config's {run[key]}")
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    metrics = dict(fitres.metrics)
    scores = {k[len(fc.EVAL_PREFIX):]: float(v) for k, v in metrics.items()
              if k.startswith(fc.EVAL_PREFIX) and k not in (fc.EVAL_EXAMPLES, fc.EVAL_SECONDS)}
    names = fc.CLASSIFIER_SCORES if set(scores) == set(fc.CLASSIFIER_SCORES) else fc.REGRESSOR_SCORES
    array = score_sums.pack(scores, names, int(metrics[fc.EVAL_EXAMPLES]), state.max_weight, state.clipping_range)
    factor = score_sums.weight_factor(int(fitres.num_examples), state.max_weight, state.target_range)
    sent = array / factor if factor > 0 else np.zeros_like(array)  # a zero factor weighs nothing, scores neither
    clear = {k: metrics[k] for k in (fc.NUM_EXAMPLES, fc.FIT_SECONDS) if k in metrics}
    res = FitRes(fitres.status, ndarrays_to_parameters([*parameters_to_ndarrays(fitres.parameters), sent]),
                 fitres.num_examples, clear)
    reply.content = compat.fitres_to_recorddict(res, keep_input=True)
    return reply


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
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(params), weight, dict(metrics))
    return Message(content=compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def record_true_update(context: Context, owner: str, server_round: int, params: list[np.ndarray],
                       weight: int, metrics: dict[str, float] | None = None) -> None:
    """Test federations only (node config ``test-record-updates``): keep what this owner masks, on its host
    (``metrics``: its true reply metrics, held-out scores included, as JSON)."""
    folder = str(context.node_config.get(fc.TEST_RECORD_UPDATES, ""))
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"metrics": np.array(json.dumps(metrics))} if metrics is not None else {}
    np.savez(out / f"{owner}-round{server_round}.npz", weight=np.array(weight), **extra,
             **{f"p{i}": np.asarray(p, dtype=np.float64) for i, p in enumerate(params)})
