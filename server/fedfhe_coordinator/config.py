"""The coordinator's YAML config (coordinator.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fedfhe_common.contracts.fl_contract import DEFAULT_MAX_EXAMPLES, owner_name_from_key_file
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.ml import fedxgb
from fedfhe_common.ml.models import FEDERATED_TREES, REGRESSORS
from fedfhe_common.runtime.config import HostPort, Range, _combined, load_config
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.aggregation import SECURE_AGGREGATIONS, Aggregation, strategy_keys_unused, strategy_kwargs


@dataclass(frozen=True)
class SuperLinkConfig:
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    fleet_address: Annotated[str, HostPort()] = "0.0.0.0:9092"
    control_host: str = "127.0.0.1"
    control_port: Annotated[int, Range(1, 65535)] = 9093
    # What `flwr run` dials; must match a SAN of certfile.
    control_address: Annotated[str, HostPort(allow_empty=True)] = ""
    database: Path | None = None
    health_address: Annotated[str, HostPort(allow_empty=True)] = ""

    @property
    def control_target(self) -> str:
        return self.control_address or f"{self.control_host}:{self.control_port}"


# secure_aggregation.enabled auto turns SecAgg+ on from this many owners: owner.yaml's default
# privacy.min_owners_per_round (with two, each owner learns the other's update from the sum).
SECURE_BY_DEFAULT_OWNERS = 3

# SecAgg+ sums integers modulo 2**32 (Flower's default modulus_range): N owners' quantised values must fit.
SECAGG_MODULUS = 2**32


@dataclass(frozen=True)
class SecureAggregationConfig:
    """training.secure_aggregation: Flower's SecAgg+ (the coordinator sees only the sum) and optional central DP.

    ``num_shares`` 0 splits each owner's secrets among every owner of the round;
    ``reconstruction_threshold`` 0 is a strict majority of those shares. A round
    goes on while at least that many owners remain; fewer, and the run fails
    naming the owners it lost. Owners refuse a threshold that is not a strict
    majority (fedfhe_common.contracts.fl_contract.check_secagg_setup).
    """

    # auto: on with SECURE_BY_DEFAULT_OWNERS registered owners or more (owners refuse smaller SecAgg+ rounds by
    # default), off below and for a regressor whose schema declares no target bounds (_resolve_secure_default);
    # resolved when the config loads, so the rest of the coordinator sees true or false.
    enabled: bool | Literal["auto"] = "auto"
    num_shares: Annotated[int, Range(0)] = 0
    reconstruction_threshold: Annotated[int, Range(0)] = 0
    # Each parameter an owner sends is clipped to [-clipping_range, clipping_range] before it is quantised.
    clipping_range: Annotated[float, Range(0, low_open=True)] = 8.0
    # Quantisation levels over that range (2**22: steps of 3.8e-6 for the default range).
    quantization_range: Annotated[int, Range(2)] = 2**22
    # Largest weight (training rows) one owner's update carries; owners with more rows count as max_weight.
    max_weight: Annotated[float, Range(1)] = 10000.0
    # Central differential privacy on the secure sum (Flower's DifferentialPrivacyClientSideFixedClipping
    # with fixedclipping_mod on the owners): 0 is off. Noise stddev on the averaged model is
    # noise_multiplier * clipping_norm / owners, per coordinate, each round.
    noise_multiplier: Annotated[float, Range(0)] = 0.0
    clipping_norm: Annotated[float, Range(0, low_open=True)] = 1.0

    def problems(self, owners: int) -> list[str]:
        """Every reason this section cannot work with ``owners`` registered owners (0: not known here)."""
        key = "training.secure_aggregation"
        out = []
        if self.num_shares in (1, 2):
            out.append(f"{key}.num_shares: must be 0 (every owner) or at least 3, got {self.num_shares}")
        elif owners and 3 <= self.num_shares < owners:
            out.append(f"{key}.num_shares: {self.num_shares} of {owners} owners: owners take part only where each "
                       "holds a share of every other's secrets (they must see which owners a sum is over); use 0")
        t = self.reconstruction_threshold
        if t == 1:
            out.append(f"{key}.reconstruction_threshold: must be 0 (a strict majority) or at least 2, got 1")
        if owners and t > owners:
            out.append(f"{key}.reconstruction_threshold: {t} is above the number of owners ({owners})")
        shares = min(self.num_shares or owners, owners) if owners else self.num_shares
        if self.num_shares and t > self.num_shares:
            out.append(f"{key}.reconstruction_threshold: {t} is above num_shares ({self.num_shares})")
        elif t >= 2 and shares and 2 * t <= shares:
            out.append(f"{key}.reconstruction_threshold: {t} is not a strict majority of the {shares} shares: "
                       f"owners refuse it (use at least {shares // 2 + 1}, or 0)")
        if owners and (owners + 1) * self.quantization_range > SECAGG_MODULUS:
            out.append(f"{key}.quantization_range: {owners} owners' sum of {self.quantization_range} levels "
                       f"overflows SecAgg+'s modulus 2**32 (use at most {SECAGG_MODULUS // (owners + 1)})")
        if self.noise_multiplier > 0 and not self.enabled:
            out.append(f"{key}.noise_multiplier: differential privacy runs on the secure sum; set enabled: true")
        return out


@dataclass(frozen=True)
class Boosting:
    """A federated XGBoost run's plan: Flower's strategy, the owners' parameters, the budget and its trees."""

    mode: fedxgb.Mode = "bagging"
    combine: str = "average"  # bagging: "average" or "sum" (fedxgb.COMBINES, resolved)
    params: fedxgb.BoostParams = field(default_factory=fedxgb.BoostParams)
    budget: fedxgb.TreeBudget = field(default_factory=fedxgb.TreeBudget)
    max_trees: int = 0  # the trees the run builds (TreeBudget.check_run); 0: not a boosting run


@dataclass(frozen=True)
class TrainingConfig:
    output_dir: Path
    rounds: Annotated[int, Range(1)] = 3
    model: str = "LogisticRegression"
    model_params: dict[str, Any] = field(default_factory=dict)
    schema: str = "digits"
    min_nodes: Annotated[int, Range(1)] = 2
    local_epochs: Annotated[int, Range(1)] = 1
    public_test: Path | None = None
    round_timeout_s: Annotated[float, Range(0, low_open=True)] = 300.0
    wait_for_nodes_s: Annotated[float, Range(0)] = 120.0
    # The most rows one owner's reply may claim (FedAvg weighs replies by it): one number for every
    # owner, or a mapping owner name -> cap with an optional ``default`` for the owners not listed.
    max_examples_per_owner: int | dict[str, int] = DEFAULT_MAX_EXAMPLES
    # Flower's strategy that aggregates the replies, and its parameters (see aggregation.py).
    aggregation: Aggregation = "auto"
    num_malicious_nodes: Annotated[int, Range(0)] = 0  # krum, multikrum, bulyan: how many hostile owners to withstand
    trimmed_fraction: float = 0.2  # fedtrimmedavg: share cut at each end per coordinate
    multikrum_select: Annotated[int, Range(0)] = 0  # multikrum: replies averaged (0: min_nodes - num_malicious_nodes)
    # fedavgm (Flower's FedAvgM): the server steps along the averaged update with this rate and momentum.
    server_learning_rate: Annotated[float, Range(0, 10, low_open=True)] = 1.0
    server_momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    # Largest L2 norm of one owner's update (its parameters minus the global ones); 0 leaves updates as sent.
    clip_norm: float = 0.0
    # In (0, 1): the largest share of a plain round's weight one owner's reply may carry (rounds.cap_shares);
    # 0 leaves the counts as claimed (each still within max_examples_per_owner). Under SecAgg+ owners cap
    # their own counts at secure_aggregation.max_weight.
    max_owner_share: float = 0.0
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    # model XGBClassifier / XGBRegressor: ``mode`` (bagging: Flower's FedXgbBagging, every owner adds trees each
    # round; cyclic: FedXgbCyclic, one owner per round) and fedxgb.BoostParams (max_depth, eta, local_rounds, ...).
    xgboost: dict[str, Any] = field(default_factory=dict)
    # What the FHE circuit can afford: max_trees, max_depth, max_n_bits (a tree's latency and keys grow with each).
    xgboost_budget: dict[str, int] = field(default_factory=dict)

    def boosting(self, owners: int) -> Boosting:
        """The boosting plan for ``owners`` registered owners (bagging sends to every connected one), checked
        against the budget; ConfigError naming the figures. Not a boosting model: an empty plan."""
        if self.model not in FEDERATED_TREES:
            if self.xgboost or self.xgboost_budget:
                raise ConfigError(f"training.xgboost and training.xgboost_budget apply to "
                                  f"{' and '.join(FEDERATED_TREES)} only, not model {self.model}")
            return Boosting()
        settings = dict(self.xgboost)
        mode = settings.pop("mode", "bagging")
        if mode not in fedxgb.MODES:
            raise ConfigError(f"training.xgboost.mode: {mode!r} is not one of {', '.join(fedxgb.MODES)}")
        schema = resolve_schema(self.schema)
        combine = fedxgb.resolve_combine(settings.pop("combine", "auto"), schema)
        params = fedxgb.BoostParams.from_mapping(settings, "training.xgboost")
        budget = fedxgb.TreeBudget.from_mapping(self.xgboost_budget)
        try:
            trees = budget.check_run(schema, params, mode, self.rounds,
                                     max(owners, self.min_nodes))
        except ConfigError as exc:
            raise ConfigError(f"training.xgboost_budget: {exc}") from None
        return Boosting(mode, combine, params, budget, trees)

    def __post_init__(self) -> None:
        strategy_kwargs(self.aggregation, self.min_nodes, self.num_malicious_nodes, self.trimmed_fraction,
                        self.multikrum_select, self.server_learning_rate, self.server_momentum)
        unused = strategy_keys_unused(self.aggregation, self.server_learning_rate, self.server_momentum)
        if unused:
            raise ConfigError(unused)
        if not (self.max_owner_share == 0 or 1 / self.min_nodes <= self.max_owner_share < 1):
            raise ConfigError(f"training.max_owner_share: must be 0 (off) or lie in [1 / min_nodes, 1) = "
                              f"[{1 / self.min_nodes:.3g}, 1), got {self.max_owner_share}: with fewer, equal "
                              "owners already hold more")
        if not self.clip_norm >= 0 or self.clip_norm == float("inf"):
            raise ConfigError(f"training.clip_norm: must be a finite number >= 0, got {self.clip_norm}")
        caps = self.max_examples_per_owner
        for owner, cap in (caps.items() if isinstance(caps, dict) else [("", caps)]):
            where = f"training.max_examples_per_owner{'.' + owner if owner else ''}"
            if cap < 1:
                raise ConfigError(f"{where}: must be a positive number of rows, got {cap}")

    def caps(self) -> tuple[int, dict[str, int]]:
        """(cap for owners not named, per-owner caps)."""
        caps = self.max_examples_per_owner
        if isinstance(caps, int):
            return caps, {}
        named = {k: v for k, v in caps.items() if k != "default"}
        return caps.get("default", DEFAULT_MAX_EXAMPLES), named


@dataclass(frozen=True)
class CoordinatorConfig:
    superlink: SuperLinkConfig
    training: TrainingConfig
    state_dir: Path
    # The release signing key (Ed25519, 0600): train signs the training artifact with it.
    release_key: Path
    supernode_public_keys: list[Path] = field(default_factory=list)
    # Training progress as Prometheus metrics, served by `superlink` (metrics.py): plain HTTP, no auth,
    # so localhost or a scrape-only network; "" = off.
    metrics_address: Annotated[str, HostPort(allow_empty=True)] = "127.0.0.1:9465"
    # Where train, register and `runs` keep what they write (flwr's FLWR_HOME, run-config.toml, flwr-run.log,
    # runs.jsonl) and train the signed artifact and the report (release_dir/training); unset: state_dir and
    # training.output_dir, for one user running everything (the demo). Where the services run as another
    # user (Ansible's release user), set it to a directory only this user writes: train then copies the
    # ServerApp's artifact out of the service-writable training.output_dir (links, hard links, FIFOs
    # refused), checks the copy and signs it, so nothing the service user can swap is ever signed.
    release_dir: Path | None = None

    @property
    def release_home(self) -> Path:
        """Where this process's own records live (never a directory the services write)."""
        return self.release_dir or self.state_dir

    @property
    def report_dir(self) -> Path:
        """Where train writes the signed artifact (``artifact/``) and the run report."""
        return self.release_dir / "training" if self.release_dir else self.training.output_dir

    def owner_names(self) -> list[str]:
        """Owners as their SuperNode key files name them (``<owner>.supernode.pub``)."""
        return [owner_name_from_key_file(p.name) for p in self.supernode_public_keys]

    def __post_init__(self) -> None:
        self._resolve_secure_default()
        self._check_boosting()
        secure = self.training.secure_aggregation.problems(len(self.supernode_public_keys))
        if self.training.secure_aggregation.enabled and self.training.aggregation not in SECURE_AGGREGATIONS:
            secure.append(f"training.secure_aggregation.enabled: SecAgg+ sums masked updates, so only fedavg, "
                          f"fedavgm or newton can aggregate them, not training.aggregation "
                          f"{self.training.aggregation}")
        if secure:
            raise _combined(secure)
        caps = self.training.max_examples_per_owner
        if isinstance(caps, dict):
            unknown = sorted(set(caps) - set(self.owner_names()) - {"default"})
            if unknown:
                raise ConfigError(
                    f"training.max_examples_per_owner: {', '.join(unknown)} not among the owners of "
                    f"supernode_public_keys ({', '.join(self.owner_names()) or 'none'})"
                )


    def _check_boosting(self) -> None:
        """A boosting run is plain: a booster's trees are not a vector SecAgg+ can sum (auto resolves to off)."""
        self.training.boosting(len(self.supernode_public_keys))
        if self.training.model in FEDERATED_TREES and self.training.aggregation != "auto":
            raise ConfigError(f"training.aggregation {self.training.aggregation}: model {self.training.model} "
                              f"aggregates with Flower's FedXgb strategies (training.xgboost.mode); leave it auto")
        if self.training.model in FEDERATED_TREES and self.training.secure_aggregation.enabled is True:
            raise ConfigError(f"training.secure_aggregation.enabled: model {self.training.model} trains in plain "
                              "runs only (Flower's FedXgb strategies combine whole trees, which SecAgg+ cannot sum); "
                              "set enabled: false, and each owner privacy.require_secure_aggregation: false")

    def _resolve_secure_default(self) -> None:
        """``enabled: auto`` made true or false; a robust aggregation with auto on is refused, not run plain."""
        sa = self.training.secure_aggregation
        if sa.enabled != "auto":
            return
        owners = len(self.supernode_public_keys)
        on = owners >= SECURE_BY_DEFAULT_OWNERS and self.training.model not in FEDERATED_TREES and (
            self.training.model not in REGRESSORS or _declares_target_bounds(self.training.schema))
        if on and self.training.aggregation not in SECURE_AGGREGATIONS:
            raise ConfigError(
                f"training.aggregation {self.training.aggregation} needs each owner's update in the clear, and "
                f"training.secure_aggregation.enabled is auto (on with {owners} owners): set enabled: false for "
                "plain mode, which owners accept only with privacy.require_secure_aggregation: false")
        object.__setattr__(self, "training", replace(self.training, secure_aggregation=replace(sa, enabled=on)))


def _declares_target_bounds(schema_ref: str) -> bool:
    """Whether a regressor's schema lets SecAgg+ carry its parameters (fedfhe_common.ml.secure_target).

    SecAgg+ clips every value at +-clipping_range, so a regressor's parameters travel in units of its target's
    declared range; without target_min/target_max, ``auto`` stays plain (and ``true`` is refused by
    aggregation.resolve). A schema this process cannot resolve counts as none: the run will say why.
    """
    try:
        return resolve_schema(schema_ref).target_max is not None
    except (ConfigError, OSError, ValueError):
        return False


def load(path: str | Path) -> CoordinatorConfig:
    return load_config(CoordinatorConfig, path)
