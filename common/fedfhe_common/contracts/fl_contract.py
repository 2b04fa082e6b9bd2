"""The typed contract between fedfhe's ServerApp and ClientApp: record names, keys, checks.

Both apps import their names from here, so a renamed key cannot drift between
them. The ServerApp validates every reply with ``check_reply`` before it counts
or aggregates it: a data owner is trusted with its rows, not with the bytes it
sends back, so a reply that does not fit the contract is that owner's failure
for the round (with the reason), never an exception in the run or a vote in the
aggregate.
"""

from __future__ import annotations

import hashlib
import math
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml import models, newton
from fedfhe_common.ml.preprocessing import check_moments
from fedfhe_common.ml.score_sums import layout_length

# Record names in a message's RecordDict.
ARRAYS = "arrays"  # ArrayRecord: coef_ then intercept_
CONFIG = "config"  # ConfigRecord: the instruction (server -> client)
METRICS = "metrics"  # MetricRecord: the reply's numbers (client -> server)

# Instruction keys (server -> client). Flower adds SERVER_ROUND itself.
MODEL = "model"
MODEL_PARAMS = "model-params"
SCHEMA_NAME = "schema-name"
N_FEATURES = "n-features"
SCHEMA_SHA256 = "schema-sha256"  # the run's schema exactly (a typed schema's column order is the encoding)
PHASE = "phase"  # "statistics": reply with the preprocessing statistics vector, not a fit
PHASE_STATISTICS = "statistics"
# "newton": reply with the data terms of the pooled objective at the received model (newton_terms), not a fit.
PHASE_NEWTON = "newton"
PREPROCESSING = "preprocessing"  # JSON of preprocessing.Preprocessing.to_dict: how every owner transforms rows
LOCAL_EPOCHS = "local-epochs"
# Training rows the statistics round counted over the owners (typed schemas): each owner scales the run's
# regularisation by it and its own rows (models.owner_params), so FedAvg minimises the pooled objective.
FEDERATION_ROWS = "federation-rows"
SERVER_ROUND = "server-round"

# Reply metric keys (client -> server).
NUM_EXAMPLES = "num-examples"  # rows the reply speaks for: FedAvg's weight
FIT_SECONDS = "fit-seconds"
EVAL_EXAMPLES = "eval-examples"  # held-out rows the eval-* scores were measured on
EVAL_SECONDS = "eval-seconds"
EVAL_PREFIX = "eval-"

def held_out_metrics(score: Any, split: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """An owner's scores of a model on its held-out rows (its training rows when it holds none back), as the
    reply's eval-* metrics. ``score(X, y)`` -> {name: value}; ``split``: (X_train, X_test, y_train, y_test)."""
    X_train, X_test, y_train, y_test = split
    if len(y_test) == 0:
        X_test, y_test = X_train, y_train
    started = time.perf_counter()
    scores = score(X_test, y_test)
    return {f"{EVAL_PREFIX}{k}": v for k, v in scores.items()} | {
        EVAL_EXAMPLES: int(len(y_test)), EVAL_SECONDS: time.perf_counter() - started}


# Node config keys of the owner's privacy policy (owner.yaml privacy: fedfhe_owner.config.PrivacyPolicy).
NODE_REQUIRE_SECURE = "privacy-require-secure-aggregation"
NODE_MIN_OWNERS = "privacy-min-owners-per-round"
NODE_MAX_EVALUATIONS = "privacy-max-evaluations-per-run"
NODE_PLAIN_NEWTON = "privacy-plain-newton"
# privacy.local_dp (all four or none; none: off): Flower's LocalDpMod on each model update (secure_client).
NODE_LOCAL_DP_CLIPPING_NORM = "privacy-local-dp-clipping-norm"
NODE_LOCAL_DP_EPSILON = "privacy-local-dp-epsilon"
NODE_LOCAL_DP_DELTA = "privacy-local-dp-delta"
NODE_LOCAL_DP_SENSITIVITY = "privacy-local-dp-sensitivity"
NODE_LOCAL_DP = (NODE_LOCAL_DP_CLIPPING_NORM, NODE_LOCAL_DP_EPSILON, NODE_LOCAL_DP_DELTA, NODE_LOCAL_DP_SENSITIVITY)
# Node config key a test federation sets to make one owner's ClientApp misbehave (never set in production).
TEST_HOSTILE_REPLY = "test-hostile-reply"
# Node config key of test federations: a folder where the ClientApp writes each true update it masks.
TEST_RECORD_UPDATES = "test-record-updates"

# Run config keys both apps read (coordinator.yaml training.secure_aggregation, via `flwr run --run-config`);
# the coordinator's side types every key in fedfhe_coordinator.run_config.RunConfig.
RUN_SECURE = "secure-aggregation"  # true: SecAgg+ (Flower's SecAggPlusWorkflow / secaggplus_mod)
RUN_SECAGG_CLIPPING_RANGE = "secagg-clipping-range"
RUN_SECAGG_MAX_WEIGHT = "secagg-max-weight"
RUN_DP_NOISE_MULTIPLIER = "dp-noise-multiplier"  # > 0: Flower's client-side fixed-clipping DP on the secure sum
# The config key Flower's DifferentialPrivacyClientSideFixedClipping adds to each train instruction.
DP_CLIPPING_NORM = "clipping_norm"

# "secure-train": a secure run's FitRes, whose held-out scores travel inside the masked sum (score_sums).
Phase = Literal["train", "evaluate", "secure-train"]

DEFAULT_MAX_EXAMPLES = 1_000_000
# Largest |parameter| a reply may carry: far beyond any fitted linear model, and small enough
# that no weighted sum of replies overflows float64 into infinity inside the aggregation.
MAX_ABS_PARAM = 1e12


CLASSIFIER_SCORES = ("loss", "accuracy")
REGRESSOR_SCORES = ("loss", "r2")


def score_names(schema: DatasetSchema) -> tuple[str, ...]:
    """The scores ``scoring.score_model`` produces for this schema's kind of model."""
    return CLASSIFIER_SCORES if schema.is_classifier else REGRESSOR_SCORES


def metric_types(phase: Phase, schema: DatasetSchema) -> dict[str, type]:
    """Every metric a reply of ``phase`` carries, with its type: no more, no fewer.

    A secure run's train reply carries its weight and fit seconds only: its held-out scores and their row
    count are inside the masked sum (score_sums), and so is nothing else of the owner's held-out rows.
    """
    if phase == "secure-train":
        return {NUM_EXAMPLES: int, FIT_SECONDS: float}
    out: dict[str, type] = {f"{EVAL_PREFIX}{name}": float for name in score_names(schema)}
    out |= {EVAL_EXAMPLES: int, EVAL_SECONDS: float, NUM_EXAMPLES: int}
    if phase == "train":
        out[FIT_SECONDS] = float
    return out


def wire_shapes(family: str, schema: DatasetSchema) -> tuple[tuple[int, ...], ...]:
    """Shapes as they travel: a scalar intercept goes as one value (transport.to_arrays)."""
    return tuple(shape if shape else (1,) for shape in models.param_shapes(family, schema))


class ReplyRejected(ValueError):
    """A reply that breaks the contract; the message is the reason recorded for the owner."""


@dataclass(frozen=True)
class Reply:
    """A reply that passed every check: parameters (train only) in model shapes, typed metrics."""

    params: list[np.ndarray] | None
    metrics: dict[str, int | float]


def owner_text(text: object, limit: int = 1000) -> str:
    """Text an owner chose (an error reason), made safe for the coordinator's outputs: one line, no control codes.

    Newlines, escape sequences, bidi overrides and every other control or format character
    are written as Python escapes, so an owner cannot forge round-table lines, progress rows
    or report lines, nor drive the operator's terminal.
    """
    out = []
    for ch in str(text)[:limit]:
        if unicodedata.category(ch)[0] == "C":  # idempotent: escaping twice changes nothing
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(str(text)) > limit else "")


def schema_sha256(schema: DatasetSchema) -> str:
    """What owners compare with their own schema file before they touch a row."""
    return hashlib.sha256(schema.to_json().encode()).hexdigest()


def check_statistics_reply(content: Any, schema: DatasetSchema, cap: int) -> tuple[np.ndarray, int]:
    """A statistics reply: one vector of 3 x inputs fractions in [0, 1] and its row count, nothing else."""
    try:
        names = set(content.keys())
        if names != {METRICS, ARRAYS}:
            raise ReplyRejected(f"a statistics reply holds exactly {METRICS!r} and {ARRAYS!r}, got "
                                f"{', '.join(repr(k)[:40] for k in sorted(names)[:5])}")
        metrics = content.metric_records.get(METRICS)
        arrays = content.array_records.get(ARRAYS)
        if metrics is None or arrays is None:
            raise ReplyRejected("malformed statistics reply: wrong record types")
        if set(metrics) != {NUM_EXAMPLES}:
            raise ReplyRejected(f"a statistics reply's metrics are exactly {NUM_EXAMPLES!r}")
        rows = check_rows(metrics[NUM_EXAMPLES], cap)
        vectors = arrays.to_numpy_ndarrays()
        if len(vectors) != 1:
            raise ReplyRejected(f"a statistics reply carries one array, got {len(vectors)}")
        try:
            vector = check_moments(vectors[0], schema)
        except ValueError as exc:
            raise ReplyRejected(str(exc)) from None
    except ReplyRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed record is the sender's failure
        raise ReplyRejected(f"malformed statistics reply: {type(exc).__name__}: {str(exc)[:200]}") from None
    return vector, int(rows)


def check_params(arrays: list[np.ndarray], family: str, schema: DatasetSchema) -> list[np.ndarray]:
    """Exactly two float arrays of the family's wire shapes, every value finite; model shapes back."""
    expected = wire_shapes(family, schema)
    if len(arrays) != len(expected):
        raise ReplyRejected(f"expected {len(expected)} parameter arrays (coef, intercept), got {len(arrays)}")
    return [_checked_array(name, arr, wire, MAX_ABS_PARAM).reshape(shape)
            for name, arr, wire, shape in zip(("coef", "intercept"), arrays, expected,
                                              models.param_shapes(family, schema), strict=True)]


def split_score_sums(arrays: list[np.ndarray], model_arrays: int,
                     schema: DatasetSchema) -> tuple[list[np.ndarray], np.ndarray]:
    """A secure run's unmasked aggregate: (the model's or newton's arrays, the held-out score sums).

    Only a secure run's aggregate carries the extra array (score_sums: each owner appends it before
    Flower masks); a plain reply with one is refused by ``check_params`` as any wrong shape is.
    """
    if len(arrays) != model_arrays + 1:
        raise ReplyRejected(f"a secure aggregate holds {model_arrays} arrays and the score sums, got {len(arrays)}")
    sums = np.asarray(arrays[-1])
    if sums.shape != (layout_length(score_names(schema)),):
        raise ReplyRejected(f"the score sums have shape {sums.shape}, the run needs "
                            f"({layout_length(score_names(schema))},)")
    return list(arrays[:-1]), sums


def model_digest(params: list[np.ndarray]) -> str:
    """sha256 of a model's arrays in order: each one's shape, then its values as float64 (the same model whichever
    dtype it travelled in). -0.0 counts as 0.0: numerically the same model, so flipping a zero's sign is no new
    model; any other difference, one ulp included, is. Owners refuse a digest they trained on (run_ledger), and
    the coordinator never sends one twice in a run (rounds.Recording.note_model)."""
    digest = hashlib.sha256()
    for arr in params:
        values = np.ascontiguousarray(arr, dtype=np.float64) + 0.0  # -0.0 + 0.0 is +0.0
        digest.update(repr(tuple(values.shape)).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _checked_array(name: str, arr: Any, shape: tuple[int, ...], bound: float) -> np.ndarray:
    """One array of a reply: exactly ``shape``, numbers, finite, within +-bound; float64 back."""
    arr = np.asarray(arr)
    if tuple(arr.shape) != shape:
        raise ReplyRejected(f"{name} has shape {tuple(arr.shape)}, the run needs {shape}")
    if arr.dtype.kind not in "fiu":
        raise ReplyRejected(f"{name} has dtype {arr.dtype}, the run needs numbers")
    arr = arr.astype(np.float64)  # before any bound: np.abs of int64's minimum is still negative
    if not np.all(np.isfinite(arr)):
        raise ReplyRejected(f"{name} has non-finite values (NaN or infinity)")
    if arr.size and float(np.max(np.abs(arr))) > bound:
        raise ReplyRejected(f"{name} has values beyond +-{bound:g}")
    return arr


# Largest |entry| of a reply's Newton terms: standardised rows keep gradients and Hessians far below it.
MAX_ABS_TERM = 1e9


def newton_shapes(family: str, schema: DatasetSchema) -> tuple[tuple[int], ...]:
    """A Newton reply's arrays: mean gradient (P), the mean Hessian's upper triangle (P(P+1)/2), mean loss (1)."""
    p = newton.n_params(family, schema)
    return (p,), (p * (p + 1) // 2,), (1,)


def pack_newton(loss: float, grad: np.ndarray, hess: np.ndarray) -> list[np.ndarray]:
    """An owner's terms as its reply's three arrays (newton_shapes)."""
    return [np.asarray(grad, dtype=np.float64), np.asarray(hess)[np.triu_indices(len(grad))].astype(np.float64),
            np.array([loss], dtype=np.float64)]


def unpack_newton(arrays: list[np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    """(loss, gradient, symmetric Hessian) from checked (or averaged) Newton arrays."""
    grad = np.asarray(arrays[0], dtype=np.float64)
    p = len(grad)
    upper = np.zeros((p, p))
    upper[np.triu_indices(p)] = arrays[1]
    return float(np.asarray(arrays[2]).ravel()[0]), grad, upper + np.triu(upper, 1).T


def check_newton_terms(arrays: list[np.ndarray], family: str, schema: DatasetSchema,
                       convex: bool = True) -> list[np.ndarray]:
    """Exactly the three arrays of newton_shapes, finite, bounded, a loss >= 0 and a Hessian with none < 0.

    A convex loss's Hessian is positive semi-definite and its loss not negative:
    an owner's indefinite Hessian could cancel the others' curvature and send
    the step anywhere, so each reply's eigenvalues are checked (P <= 400: cheap).
    ``convex`` False: a SecAgg+ sum, whose quantisation may put a zero a step below
    0 (newton.Stepper checks the average with the rounding's tolerance).
    """
    expected = newton_shapes(family, schema)
    if len(arrays) != len(expected):
        raise ReplyRejected(f"expected {len(expected)} arrays (gradient, hessian, loss), got {len(arrays)}")
    out = [_checked_array(name, arr, shape, MAX_ABS_TERM)
           for name, arr, shape in zip(("gradient", "hessian", "loss"), arrays, expected, strict=True)]
    if convex:
        if out[2][0] < 0:
            raise ReplyRejected("a negative loss: not the terms of a convex loss")
        _, _, hess = unpack_newton(out)
        lowest = float(np.linalg.eigvalsh(hess)[0])
        if lowest < -1e-9 * max(1.0, float(np.max(np.abs(np.diag(hess))))):
            raise ReplyRejected(f"a Hessian with a negative eigenvalue ({lowest:.3g}): not a convex loss's")
    return out


def _check_metric(key: str, value: Any, tp: type, cap: int) -> int | float:
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ReplyRejected(f"metric {key} must be an integer, got {type(value).__name__}")
        value = int(value)
        if value <= 0:
            raise ReplyRejected(f"metric {key} must be positive, got {value}")
        if value > cap:
            raise ReplyRejected(f"metric {key} is {value}, above this owner's cap of {cap}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ReplyRejected(f"metric {key} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) and key == f"{EVAL_PREFIX}loss":
        return value  # log-loss is undefined when the held-out rows lack a class (scoring.score_model)
    if not math.isfinite(value):
        raise ReplyRejected(f"metric {key} must be finite, got {value}")
    if key.endswith("-seconds") and value < 0:
        raise ReplyRejected(f"metric {key} must not be negative, got {value}")
    if key == f"{EVAL_PREFIX}accuracy" and not 0.0 <= value <= 1.0:
        raise ReplyRejected(f"metric {key} must lie in [0, 1], got {value}")
    if key == f"{EVAL_PREFIX}loss" and value < 0:
        raise ReplyRejected(f"metric {key} must not be negative, got {value}")
    return value


def check_rows(value: Any, cap: int) -> int:
    """A reply's row count (its weight): a positive integer within the owner's cap."""
    return int(_check_metric(NUM_EXAMPLES, value, int, cap))


def check_metrics(metrics: dict[str, Any], phase: Phase, schema: DatasetSchema, cap: int) -> dict[str, int | float]:
    """The declared names with their types, counts in (0, cap]; an extra or missing key fails."""
    types = metric_types(phase, schema)
    extra = sorted(set(metrics) - set(types))
    if extra:
        raise ReplyRejected(f"unexpected metric(s) {', '.join(repr(k)[:60] for k in extra[:5])}")
    absent = sorted(set(types) - set(metrics))
    if absent:
        raise ReplyRejected(f"missing metric(s) {', '.join(absent)}")
    return {key: _check_metric(key, metrics[key], tp, cap) for key, tp in types.items()}


def check_reply(content: Any, phase: Phase, family: str, schema: DatasetSchema, cap: int,
                newton_terms: bool = False) -> Reply:
    """Validate a reply's RecordDict: its records, parameters (Newton terms in a newton run) and metrics.

    Records other than the contract's (an ``owner`` record claiming a name, ...)
    are refused: who sent a reply is known from the SuperNode's registration.
    """
    wanted = {METRICS} | ({ARRAYS} if phase == "train" else set())
    try:
        names = set(content.keys())
        if wanted - names:
            raise ReplyRejected(f"missing record(s) {', '.join(sorted(wanted - names))}")
        metrics_rec = content.metric_records.get(METRICS)
        if metrics_rec is None:
            raise ReplyRejected(f"record {METRICS!r} is not a MetricRecord")
        metrics = check_metrics(dict(metrics_rec), phase, schema, cap)
        params = None
        if phase == "train":
            arrays_rec = content.array_records.get(ARRAYS)
            if arrays_rec is None:
                raise ReplyRejected(f"record {ARRAYS!r} is not an ArrayRecord")
            check = check_newton_terms if newton_terms else check_params
            params = check(arrays_rec.to_numpy_ndarrays(), family, schema)
        extra = sorted(names - wanted)
        if extra:
            raise ReplyRejected(f"unexpected record(s) {', '.join(repr(k)[:60] for k in extra[:5])}")
    except ReplyRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed record is the sender's failure, not the run's
        raise ReplyRejected(f"malformed reply: {type(exc).__name__}: {str(exc)[:200]}") from None
    return Reply(params, metrics)


# Owners' refusals of a SecAgg+ sum over other owners than the run's first, or over too few
# (fedfhe_owner.clientapp.run_ledger.check_fixed_membership): the coordinator reads either in a halted round as an owner
# lost mid-run, and ends the training with the model it has (secure_training.CheckedSecAgg).
REFUSED_OTHER_OWNERS = "is over other owners than this run's first secure sum"
REFUSED_FEW_OWNERS = "this owner takes part only in sums of at least"


class InstructionRefused(ValueError):
    """What the coordinator sent does not fit the contract: the owner refuses the message with this reason."""


def check_secagg_setup(share_num: object, threshold: object, sample_num: object, min_owners: int = 2) -> None:
    """An owner's check of a SecAgg+ setup before it generates keys (InstructionRefused when unsafe).

    A coordinator may ask some neighbours for an owner's mask seed share and others
    for its key share (claiming the owner dropped out); it can unmask that owner
    alone only if it gets ``threshold`` of each, i.e. when ``2 * threshold <= shares``.
    A strict majority threshold rules that out, so anything lower is refused. Fewer shares than
    owners (a partial graph) is refused too: the owner would see only its neighbours' part of the
    active list at unmask, which the fixed-membership rule (fedfhe_owner.clientapp.run_ledger) needs whole.
    """
    for name, value in (("share number", share_num), ("threshold", threshold), ("sample number", sample_num)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InstructionRefused(f"SecAgg+ setup: {name} must be an integer, got {type(value).__name__}")
    assert isinstance(share_num, int) and isinstance(threshold, int) and isinstance(sample_num, int)
    if sample_num < max(2, min_owners) or share_num < 2:
        raise InstructionRefused(f"SecAgg+ setup: {sample_num} owners and {share_num} shares; this owner takes part "
                                 f"in rounds of at least {max(2, min_owners)} owners (owner.yaml "
                                 "privacy.min_owners_per_round)")
    if share_num < sample_num:
        raise InstructionRefused(
            f"SecAgg+ setup: {share_num} shares for {sample_num} owners; this owner takes part only where every "
            "owner holds a share of every other's secrets, so that it sees which owners each sum is over "
            "(coordinator.yaml training.secure_aggregation.num_shares: 0)")
    if threshold < 2 or 2 * threshold <= min(share_num, sample_num):
        raise InstructionRefused(
            f"SecAgg+ setup: reconstruction threshold {threshold} of {min(share_num, sample_num)} shares is not a "
            "strict majority: the coordinator could unmask one owner's update"
        )


def check_secagg_unmask(active: object, dead: object, neighbours: set[int], threshold: int) -> None:
    """An owner's check of SecAgg+'s unmask request before it hands out any share (InstructionRefused if unsafe).

    For each neighbour the owner gives either its mask-seed share (listed active) or its key share (listed
    dead), never both: Flower 1.39's secaggplus_mod hands out both for a node on both lists, which lets the
    coordinator unmask that node's update alone. With one kind per owner and the strict-majority threshold
    the setup check requires, the coordinator can gather ``threshold`` shares of both kinds for a node only
    from more than all its neighbours, so per-owner disjointness suffices even if it tells owners different
    lists. Both lists must name only neighbours of this round's setup, without repeats.
    """
    lists = {}
    for name, value in (("active", active), ("dead", dead)):
        if not isinstance(value, list) or any(isinstance(n, bool) or not isinstance(n, int) for n in value):
            raise InstructionRefused(f"SecAgg+ unmask: the {name} list must be a list of node ids")
        if len(set(value)) != len(value):
            raise InstructionRefused(f"SecAgg+ unmask: the {name} list names a node twice")
        lists[name] = set(value)
    both = lists["active"] & lists["dead"]
    if both:
        raise InstructionRefused(f"SecAgg+ unmask: node(s) {', '.join(map(str, sorted(both)[:5]))} listed as both "
                                 "active and dead: both their shares would let the coordinator unmask them alone")
    strangers = (lists["active"] | lists["dead"]) - neighbours
    if strangers:
        raise InstructionRefused(f"SecAgg+ unmask: node(s) {', '.join(map(str, sorted(strangers)[:5]))} are not "
                                 "neighbours of this round's setup")
    if len(lists["active"]) < threshold:
        raise InstructionRefused(f"SecAgg+ unmask: {len(lists['active'])} active owners, fewer than the threshold "
                                 f"{threshold}")


def owner_key_id(public_key_pem: bytes) -> str:
    """A SuperNode's identity as the ServerApp sees it: sha256 of its registered public key (PEM)."""
    return hashlib.sha256(public_key_pem.strip()).hexdigest()


def owner_name_from_key_file(name: str) -> str:
    """``<owner>.supernode.pub`` (what fedfhe-pki writes) names its owner."""
    for suffix in (".supernode.pub", ".pub"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def cap_for(owner: str, default: int, per_owner: dict[str, int]) -> int:
    """The most rows one reply from ``owner`` may claim."""
    return int(per_owner.get(owner, default))
