"""owner.yaml privacy.local_dp: Flower's LocalDpMod clips and noises each model update on the owner (issue 25).

The owner's real ClientApp (``fedfhe_owner.clientapp.client_app.app``: Flower's ClientApp with its mod chain) trains
on a real file of digits rows. A plain run's reply is checked as the coordinator receives it; a secure run's
goes through Flower's real ``secaggplus_mod`` and is unmasked here with the owner's own mask seed, so what
is compared is what the coordinator would recover from the masked vector: the noise is in it. Flower's
mods draw from NumPy's global generator, seeded in each test, so the statistics are fixed numbers, and
their tolerances (about ten standard errors) would hold for any seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import FitIns, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.config import parse_config_args
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract, parameters_mod, parameters_subtraction
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat
from sklearn.datasets import load_digits
from test_fl_contract import task_identity  # noqa: F401 - Flower's Message needs a task identity

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.contracts.transport import to_arrays
from fedfhe_common.ml import models
from fedfhe_common.ml.data import save_csv
from fedfhe_common.ml.preprocessing import moments
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_owner import config as owner_config
from fedfhe_owner.clientapp.client_app import app
from fedfhe_owner.clientapp.run_ledger import LEDGER
from fedfhe_owner.clientapp.secure_client import local_dp
from fedfhe_owner.supernode.launch import node_config

SCHEMA = resolve_schema("digits")
FAMILY = "LogisticRegression"
GLOBAL = [np.atleast_1d(a) for a in to_arrays(models.initial_parameters(FAMILY, SCHEMA)).to_numpy_ndarrays()]
EXAMPLE = Path(__file__).resolve().parents[2] / "client" / "owner.example.yaml"
# SecAgg+ as the coordinator's workflow sets it up (one owner's view; its mask seed is the test's).
CLIPPING_RANGE, TARGET_RANGE, MOD_RANGE, MAX_WEIGHT = 100.0, 1 << 22, 1 << 32, 1000.0
SEED = bytes(range(32))


def gaussian_stddev(sensitivity: float, epsilon: float, delta: float) -> float:
    """The classic Gaussian mechanism's standard deviation (Flower's LocalDpMod docstring and log line)."""
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    X, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("owner") / "owner.csv"
    save_csv(path, X[:200], y[:200], SCHEMA)
    return path


def owner(rows: Path, dp: dict[str, float] | None = None, secure: bool = False, **run: object) -> Context:
    node = {"owner-id": "owner-0", "data-path": str(rows), "schema": "digits", "holdout-fraction": 0.2, "seed": 0,
            fc.NODE_REQUIRE_SECURE: False}  # the plain runs here are this owner's choice
    if dp is not None:
        dp = {"sensitivity": 2 * dp["clipping_norm"], **dp}
        node |= {fc.NODE_LOCAL_DP_CLIPPING_NORM: dp["clipping_norm"], fc.NODE_LOCAL_DP_EPSILON: dp["epsilon"],
                 fc.NODE_LOCAL_DP_DELTA: dp["delta"], fc.NODE_LOCAL_DP_SENSITIVITY: dp["sensitivity"]}
    run_config = dict(run)
    if secure:
        run_config |= {fc.RUN_SECURE: True, fc.RUN_SECAGG_CLIPPING_RANGE: CLIPPING_RANGE,
                       fc.RUN_SECAGG_MAX_WEIGHT: MAX_WEIGHT}
    return Context(run_id=1, node_id=11, node_config=node, state=RecordDict(), run_config=run_config)


def instruction(phase: str = "") -> ConfigRecord:
    config = ConfigRecord({fc.MODEL: FAMILY, fc.MODEL_PARAMS: "{}", fc.SCHEMA_NAME: SCHEMA.name,
                           fc.N_FEATURES: SCHEMA.n_features, fc.SCHEMA_SHA256: fc.schema_sha256(SCHEMA),
                           fc.LOCAL_EPOCHS: 1, fc.SERVER_ROUND: 1})
    if phase:
        config[fc.PHASE] = phase
    return config


def plain_message(phase: str = "") -> Message:
    """What the coordinator's strategy sends: the global model and the instruction (a statistics one: no model)."""
    content = RecordDict({fc.CONFIG: instruction(phase)})
    if phase != fc.PHASE_STATISTICS:
        content[fc.ARRAYS] = to_arrays(GLOBAL)
    return Message(content=content, dst_node_id=11, message_type=MessageType.TRAIN)


def plain_reply(context: Context, phase: str = "") -> list[np.ndarray]:
    reply = app(plain_message(phase), context)
    assert not reply.has_error(), reply.error
    return reply.content[fc.ARRAYS].to_numpy_ndarrays()


def secure_reply(context: Context, phase: str = "") -> list[np.ndarray]:
    """One owner's masked-vector stage through Flower's secaggplus_mod, unmasked with its own seed.

    The owner is its round's only sender (threshold 1), so its vector carries its private mask alone:
    removing it leaves exactly what this owner's update adds to the sum the coordinator unmasks.
    """
    state = SecAggPlusState(current_stage=Stage.SHARE_KEYS, nid=11, sample_num=3, share_num=3, threshold=1,
                            clipping_range=CLIPPING_RANGE, target_range=TARGET_RANGE, mod_range=MOD_RANGE,
                            max_weight=MAX_WEIGHT, rd_seed=SEED)
    context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
    fitins = FitIns(ndarrays_to_parameters(GLOBAL), dict(instruction(phase)))
    content = compat.fitins_to_recorddict(fitins, keep_input=True)
    content[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [],
                                                Key.SOURCE_LIST: []})
    reply = app(Message(content=content, dst_node_id=11, message_type=MessageType.TRAIN), context)
    assert not reply.has_error(), reply.error
    assert not any(len(r) for r in reply.content.array_records.values())  # Flower cleared the clear update
    masked = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
    mask = pseudo_rand_gen(SEED, MOD_RANGE, [m.shape for m in masked])
    q_ratio, quantized = factor_extract(parameters_mod(parameters_subtraction(masked, mask), MOD_RANGE))
    unmasked = [p / (q_ratio / TARGET_RANGE) for p in dequantize(quantized, CLIPPING_RANGE, TARGET_RANGE)]
    # A model update's vector ends with the owner's held-out score sums (tests/unit/test_secure_metrics.py).
    return unmasked if phase == fc.PHASE_STATISTICS else unmasked[:-1]


def flat(params: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(p) for p in params])


def clipped_update(params: list[np.ndarray], norm: float) -> np.ndarray:
    update = flat(params) - flat(GLOBAL)
    return update * min(1.0, norm / np.linalg.norm(update))


# ---- plain runs: flwr.clientapp.mod.LocalDpMod on the Message API reply ----------------------------------

def test_a_plain_update_is_clipped_to_the_norm_before_it_leaves(rows):
    clear = plain_reply(owner(rows))
    assert np.linalg.norm(flat(clear) - flat(GLOBAL)) > 1.2  # the local fit moves further than the norm below
    np.random.seed(1)
    tiny_noise = {"clipping_norm": 1.0, "epsilon": 1e6, "delta": 0.5}  # noise of standard deviation ~3e-6
    noised = plain_reply(owner(rows, tiny_noise))
    update = flat(noised) - flat(GLOBAL)
    assert np.linalg.norm(update) == pytest.approx(1.0, abs=1e-3)
    direction = flat(clear) - flat(GLOBAL)
    assert update @ direction / (np.linalg.norm(update) * np.linalg.norm(direction)) > 0.9999  # scaled, not bent


def test_a_plain_update_carries_gaussian_noise_of_the_configured_scale(rows):
    """Over 8 replies x 650 parameters: standard deviation within 10% of the configured one, mean near 0.

    The sample standard deviation of 5200 draws has a relative standard error of 1%, so 10% is ten of them.
    The coordinator's run config cannot change the noise: the mod reads the owner's node config only.
    """
    dp = {"clipping_norm": 1.0, "epsilon": 1.0, "delta": 1e-5, "sensitivity": 0.1}
    sigma = gaussian_stddev(0.1, 1.0, 1e-5)
    clear = plain_reply(owner(rows))
    hostile_run = {key: 1e12 for key in fc.NODE_LOCAL_DP} | {fc.RUN_DP_NOISE_MULTIPLIER: 0.0}
    np.random.seed(2)
    noise = []
    for _ in range(8):
        reply = plain_reply(owner(rows, dp, **hostile_run))
        assert not np.allclose(flat(reply), flat(clear))
        noise.append(flat(reply) - flat(GLOBAL) - clipped_update(clear, 1.0))
    noise = np.concatenate(noise)
    assert np.std(noise) == pytest.approx(sigma, rel=0.10)
    assert abs(np.mean(noise)) < 10 * sigma / math.sqrt(noise.size)
    assert owner_config.LocalDp(**dp).noise_stddev == pytest.approx(sigma)


def test_plain_statistics_replies_are_untouched(rows):
    """The statistics phase sends fractions in [0, 1] over the owner's rows, not a model: no clipping, no noise."""
    dp = {"clipping_norm": 0.01, "epsilon": 0.5, "delta": 1e-5}
    clear = plain_reply(owner(rows), fc.PHASE_STATISTICS)
    np.random.seed(3)
    assert np.array_equal(flat(plain_reply(owner(rows, dp), fc.PHASE_STATISTICS)), flat(clear))
    assert len(clear) == 1 and clear[0].shape == moments(load_digits().data[:1], SCHEMA).shape
    assert clear[0].min() >= 0 and clear[0].max() <= 1


def test_a_plain_newton_round_is_refused_under_local_dp_before_anything_is_read(rows):
    context = owner(rows, {"clipping_norm": 1.0, "epsilon": 1.0, "delta": 1e-5})
    with pytest.raises(fc.InstructionRefused, match=r"privacy.local_dp.*training.aggregation fedavg"):
        app(plain_message(fc.PHASE_NEWTON), context)
    assert LEDGER not in context.state.config_records  # not even counted as an evaluation


# ---- secure runs: flwr.client.mod.LocalDpMod on the FitRes inside secaggplus_mod's inner call --------------

def test_a_secure_update_is_clipped_and_noised_before_secaggplus_masks_it(rows):
    dp = {"clipping_norm": 1.0, "epsilon": 1.0, "delta": 1e-5, "sensitivity": 0.1}
    sigma = gaussian_stddev(0.1, 1.0, 1e-5)
    np.random.seed(4)
    clear = secure_reply(owner(rows, secure=True))
    # Without local DP the coordinator recovers the owner's fit (to within SecAgg+'s quantisation step).
    np.testing.assert_allclose(flat(clear), flat(plain_reply(owner(rows))), atol=1e-3)
    noise = np.concatenate([flat(secure_reply(owner(rows, dp, secure=True))) - flat(GLOBAL)
                            - clipped_update(clear, 1.0) for _ in range(4)])
    assert np.std(noise) == pytest.approx(sigma, rel=0.15)  # 2600 draws: relative standard error 1.4%
    assert abs(np.mean(noise)) < 10 * sigma / math.sqrt(noise.size)


def test_secure_statistics_replies_are_untouched(rows):
    dp = {"clipping_norm": 0.01, "epsilon": 0.5, "delta": 1e-5}
    np.random.seed(5)
    stats = secure_reply(owner(rows, dp, secure=True), fc.PHASE_STATISTICS)
    np.testing.assert_allclose(stats[0], plain_reply(owner(rows), fc.PHASE_STATISTICS)[0], atol=1e-3)


def test_a_secure_newton_round_is_refused_under_local_dp(rows):
    with pytest.raises(fc.InstructionRefused, match=r"privacy.local_dp.*newton's gradient and Hessian"):
        secure_reply(owner(rows, {"clipping_norm": 1.0, "epsilon": 1.0, "delta": 1e-5}, secure=True),
                     fc.PHASE_NEWTON)


# ---- owner.yaml -> node config -> the ClientApp ----------------------------------------------------------

def write_owner(tmp_path: Path, local_dp_section: object) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["privacy"]["local_dp"] = local_dp_section
    path = tmp_path / "owner.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_owner_yaml_local_dp_reaches_the_clientapp_through_flowers_node_config(tmp_path):
    cfg = owner_config.load(write_owner(tmp_path, {"clipping_norm": 0.5, "epsilon": 0.8, "delta": 1e-6}))
    assert cfg.privacy.local_dp == owner_config.LocalDp(clipping_norm=0.5, epsilon=0.8, delta=1e-6)
    parsed = parse_config_args([node_config(cfg)])  # what flower-supernode --node-config makes of it
    context = Context(run_id=1, node_id=11, node_config=parsed, state=RecordDict(), run_config={})
    assert local_dp(context) == {"clipping_norm": 0.5, "epsilon": 0.8, "delta": 1e-6, "sensitivity": 1.0}
    cfg = owner_config.load(write_owner(tmp_path, {"clipping_norm": 2, "epsilon": 3, "delta": 0.01,
                                                   "sensitivity": 0.25}))
    parsed = parse_config_args([node_config(cfg)])
    assert local_dp(Context(run_id=1, node_id=11, node_config=parsed, state=RecordDict(), run_config={})) == \
        {"clipping_norm": 2.0, "epsilon": 3.0, "delta": 0.01, "sensitivity": 0.25}


def test_absent_local_dp_is_off(tmp_path):
    cfg = owner_config.load(EXAMPLE)
    assert cfg.privacy.local_dp is None
    parsed = parse_config_args([node_config(cfg)])
    assert not set(fc.NODE_LOCAL_DP) & set(parsed)
    assert local_dp(Context(run_id=1, node_id=11, node_config=parsed, state=RecordDict(), run_config={})) is None


@pytest.mark.parametrize("section,problem", [
    ({"clipping_norm": 1, "epsilon": 0, "delta": 1e-5}, "privacy.local_dp.epsilon: must be > 0, got 0"),
    ({"clipping_norm": 1, "epsilon": -1, "delta": 1e-5}, "privacy.local_dp.epsilon: must be > 0, got -1"),
    ({"clipping_norm": 1, "epsilon": 1, "delta": 0}, "privacy.local_dp.delta: must be > 0 and < 1, got 0"),
    ({"clipping_norm": 1, "epsilon": 1, "delta": 1}, "privacy.local_dp.delta: must be > 0 and < 1, got 1"),
    ({"clipping_norm": 0, "epsilon": 1, "delta": 1e-5}, "privacy.local_dp.clipping_norm: must be > 0, got 0"),
    ({"clipping_norm": 1, "epsilon": 1, "delta": 1e-5, "sensitivity": 0},
     "privacy.local_dp.sensitivity: must be > 0, got 0"),
    ({"clipping_norm": 1, "epsilon": float("inf"), "delta": 1e-5}, "privacy.local_dp.epsilon: must be finite"),
    ({"clipping_norm": 1, "epsilon": "high", "delta": 1e-5}, "privacy.local_dp.epsilon: expected a number"),
    ({"epsilon": 1, "delta": 1e-5}, "missing required key privacy.local_dp.clipping_norm"),
    ({"clipping_norm": 1, "epsilon": 1, "delta": 1e-5, "noise": 2}, "unknown key privacy.local_dp.noise"),
    ({}, "missing required key privacy.local_dp.clipping_norm"),
])
def test_a_bad_local_dp_section_is_refused_naming_the_key(tmp_path, section, problem):
    with pytest.raises(ConfigError) as err:
        owner_config.load(write_owner(tmp_path, section))
    assert problem in str(err.value)


def test_a_node_config_with_part_of_local_dp_is_refused_not_run_without_noise(rows):
    context = owner(rows, {"clipping_norm": 1.0, "epsilon": 1.0, "delta": 1e-5})
    del context.node_config[fc.NODE_LOCAL_DP_DELTA]
    with pytest.raises(ConfigError, match=f"without {fc.NODE_LOCAL_DP_DELTA}"):
        app(plain_message(), context)
