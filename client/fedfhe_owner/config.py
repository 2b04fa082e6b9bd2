"""A data owner's YAML config (owner.yaml)."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from fedfhe_common.ml.fedxgb import OwnerTreePolicy
from fedfhe_common.pki.app_approval import CONFIG_KEY, normalize_digest
from fedfhe_common.runtime.config import HostPort, Range, load_config
from fedfhe_common.runtime.errors import ConfigError


@dataclass(frozen=True)
class LocalDp:
    """Local differential privacy: Flower's LocalDpMod clips each model update and adds Gaussian noise on this host."""

    # Each round's update (the parameters this owner fitted minus the global model it received) is scaled down to
    # at most this L2 norm before the noise is added.
    clipping_norm: Annotated[float, Range(0, low_open=True)]
    # The budget of one round's release (smaller: more noise). The noise is the classic Gaussian mechanism's,
    # standard deviation sensitivity x sqrt(2 ln(1.25 / delta)) / epsilon per coordinate, whose (epsilon, delta)
    # guarantee is proven for epsilon < 1; rounds compose (R rounds: at most R x epsilon and R x delta).
    epsilon: Annotated[float, Range(0, low_open=True)]
    delta: Annotated[float, Range(0, 1, low_open=True, high_open=True)]
    # How far apart two of this owner's releases can be without the noise: unset, 2 x clipping_norm (any two
    # clipped updates, i.e. the owner's whole data set is protected); a smaller value is the owner's own claim.
    sensitivity: Annotated[float, Range(0, low_open=True)] | None = None

    def __post_init__(self) -> None:
        for name in ("clipping_norm", "epsilon", "delta", "sensitivity"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"privacy.local_dp.{name}: must be finite, got {value}")

    @property
    def noise_sensitivity(self) -> float:
        """The sensitivity the noise is calibrated to (LocalDpMod's ``sensitivity``)."""
        return 2.0 * self.clipping_norm if self.sensitivity is None else self.sensitivity

    @property
    def noise_stddev(self) -> float:
        """The standard deviation LocalDpMod adds to every coordinate of every update."""
        return self.noise_sensitivity * math.sqrt(2.0 * math.log(1.25 / self.delta)) / self.epsilon


@dataclass(frozen=True)
class PrivacyPolicy:
    """What this owner insists on whatever the coordinator's run config says (checked in its ClientApp)."""

    # Refuse every training message outside SecAgg+ (the coordinator would see this owner's update in the clear).
    # On by default (issue 25): plain mode, and any federation of two owners, needs each owner's explicit false.
    require_secure_aggregation: bool = True
    # A SecAgg+ round with fewer owners is refused: with two, the other owner's update is the sum minus one's own.
    min_owners_per_round: Annotated[int, Range(2)] = 3
    # Global models this owner scores on its held-out rows in one run (each round's and the final one): each
    # score is a query on those rows, and one per class reveals their label histogram (issue 25).
    max_evaluations_per_run: Annotated[int, Range(1)] = 100
    # Send newton's mean gradient and Hessian (second moments of the owner's standardised rows) to the
    # coordinator in the clear; false: only through SecAgg+ (aggregation newton or auto under secure runs).
    plain_newton: bool = True
    # Local differential privacy on this owner's model updates (absent: off), in plain and secure runs alike:
    # the noise is added here, before the update leaves (before SecAgg+ masks it), so it protects the update
    # from the coordinator too. Statistics (fractions) travel without it; newton rounds are refused under it.
    local_dp: LocalDp | None = None
    # Federated XGBoost (plain runs only: a booster cannot go through SecAgg+, so require_secure_aggregation must
    # be false to take part): the deepest trees, the most trees and the smallest min_child_weight (Hessian mass a
    # leaf needs: rows, for squared error) this owner boosts with. A leaf is an average over the rows reaching it.
    trees: OwnerTreePolicy = field(default_factory=OwnerTreePolicy)


@dataclass(frozen=True)
class InferenceEndpoint:
    """Where this owner's encrypted predictions run; certfile's CN is its identity there."""

    address: Annotated[str, HostPort()]
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    server_name: str = ""
    model_id: str = ""  # default model for `predict` (empty: the only one served)
    batch_size: Annotated[int, Range(1)] = 16  # ciphertexts per Predict call
    timeout_s: Annotated[float, Range(0, low_open=True)] = 600.0  # deadline per Predict call
    upload_timeout_s: Annotated[float, Range(0, low_open=True)] = 900.0  # deadline for one evaluation-key upload
    chunk_bytes: Annotated[int, Range(1)] = 1 << 20  # key upload chunk size
    max_message_bytes: Annotated[int, Range(1)] = 64 << 20
    # release.pub that must sign the client specs; defaults to owner.yaml's top-level release_public_key.
    release_public_key: Path | None = None
    # The project CRL: a revoked inference-node certificate is refused; defaults to owner.yaml's crl_file.
    crl_file: Path | None = None
    # Set from owner.yaml (not a key of its own): the newest CRL number accepted, and whether an expired CRL is.
    crl_mark: Path | None = None
    allow_expired_crl: bool = False
    # More inference nodes serving the same models, as IP:port (issue 29): calls spread over ``address`` and
    # these with gRPC's round_robin, and a call refused UNAVAILABLE is retried (inference_client.RETRY_POLICY),
    # on another node when one is down. Needs server_name, a SAN every node's certificate carries; the nodes
    # need the owner's keys (a shared key registry).
    more_addresses: list[Annotated[str, HostPort()]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.more_addresses:
            return
        if not self.server_name:
            raise ConfigError("inference.more_addresses: set inference.server_name too, a name every inference "
                              "node's certificate carries (the nodes have one address each, the owner one name)")

        for address in [self.address, *self.more_addresses]:
            host = address.rpartition(":")[0].strip("[]")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"inference: {address!r}: with more_addresses every node is an IP:port (gRPC's "
                                  "static ipv4:/ipv6: resolver); for names, one DNS name with several records "
                                  "as inference.address") from None

    @property
    def addresses(self) -> list[str]:
        return [self.address, *self.more_addresses]


@dataclass(frozen=True)
class OwnerConfig:
    owner_id: str
    superlink: Annotated[str, HostPort()]
    root_certificates: Path
    auth_key: Path
    data: Path
    state_dir: Path
    labels: Path | None = None
    schema: str = "digits"
    holdout_fraction: Annotated[float, Range(0, 1, high_open=True)] = 0.2
    seed: int = 0
    runtime_address: Annotated[str, HostPort()] = "127.0.0.1:9094"
    health_address: Annotated[str, HostPort(allow_empty=True)] = ""
    inference: InferenceEndpoint | None = None
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    # Ed25519 release.pub (distributed with the CA): verifies signed releases this owner receives.
    release_public_key: Path | None = None
    # The project CRL (crl.pem of `fedfhe-pki revoke`): a SuperLink or inference node presenting a revoked
    # certificate is refused before gRPC connects (fedfhe_owner.server_certificate).
    crl_file: Path | None = None
    # Accept a CRL past its next update (else refused, naming the date); a CRL older than the newest accepted
    # (its number, kept in state_dir/crl-number) is refused always: it would un-revoke certificates.
    allow_expired_crl: bool = False
    # App digests (`fedfhe-coordinator app-hash`) of the Flower Apps this SuperNode may run; empty refuses every run.
    approved_flower_apps: list[str] = field(default_factory=list)
    # Test federations only: this owner's ClientApp sends a hostile reply (fl_contract.TEST_HOSTILE_REPLY).
    test_hostile_reply: Literal["", "inflated-weight", "nan"] = ""
    # Test federations only: a folder where a secure run's ClientApp keeps each true update it masks.
    test_record_updates: Path | None = None

    def __post_init__(self) -> None:
        try:
            pins = [normalize_digest(d, f"{CONFIG_KEY}[{i}]") for i, d in enumerate(self.approved_flower_apps)]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "approved_flower_apps", pins)
        if self.inference is not None:
            inherited = {k: getattr(self, k) for k in ("release_public_key", "crl_file")
                         if getattr(self.inference, k) is None and getattr(self, k) is not None}
            inherited |= {"crl_mark": self.crl_mark, "allow_expired_crl": self.allow_expired_crl}
            object.__setattr__(self, "inference", dataclasses.replace(self.inference, **inherited))

    @property
    def crl_mark(self) -> Path:
        """This owner's record of the newest CRL number it accepted (crl_mark): one for both servers."""
        return self.state_dir / "crl-number"


def load(path: str | Path) -> OwnerConfig:
    return load_config(OwnerConfig, path)
