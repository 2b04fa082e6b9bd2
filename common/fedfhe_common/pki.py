"""The project's own PKI on ``cryptography``: one CA, server and client certificates,
SuperNode authentication key pairs. Private keys are written 0600, atomically.

Layout of a PKI directory::

    ca.crt ca.key                    # the CA (ca.key never leaves the control node)
    <name>.crt <name>.key            # server or client certificates
    <name>.supernode.key/.pub        # SuperNode authentication key pair
    revoked.txt crl.pem              # revoked serials (hex, name, date, reason) and the CA-signed CRL
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import PKIError
from .fileio import write_atomic

CA_DAYS = 3650
LEAF_DAYS = 825
CRL_DAYS = 30
REVOKED_FILE = "revoked.txt"
CRL_FILE = "crl.pem"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfhe"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def init_ca(directory: Path, common_name: str = "fedfhe CA", exist_ok: bool = False) -> Path:
    """Create ca.crt/ca.key; an existing CA is kept with exist_ok, refused otherwise."""
    crt, key_path = directory / "ca.crt", directory / "ca.key"
    if crt.exists() or key_path.exists():
        if exist_ok and crt.exists() and key_path.exists():
            load_ca(directory)
            return crt
        raise PKIError(f"{directory}: a CA already exists (ca.crt/ca.key); refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM))
    return crt


def load_ca(directory: Path) -> CA:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PKIError(f"{exc.filename}: missing; run 'fedfhe-pki init' first") from None
    except ValueError as exc:
        raise PKIError(f"{directory}: CA files are not valid PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{directory}/ca.key: expected an EC key")
    return CA(cert, key)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def issue(
    directory: Path,
    name: str,
    *,
    server_hosts: list[str] | None = None,
    client: bool = False,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    force: bool = False,
    ca_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Issue ``name.crt``/``name.key`` signed by the CA.

    ``server_hosts`` become SANs and the serverAuth usage; ``client`` adds
    clientAuth (the CN is the identity the inference node uses as owner).
    """
    if not server_hosts and not client:
        raise PKIError(f"{name}: a certificate needs server hosts (SANs) or the client role")
    _check_name(name)
    crt_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if crt_path.exists() and not force:
        return crt_path, key_path
    ca = load_ca(ca_dir or directory)
    if crt_path.exists() and _parses(crt_path):  # re-issued with force: the old certificate must stop working
        revoke(directory, name, reason="superseded", ca_dir=ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server_hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(server_hosts)), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def _parses(crt: Path) -> bool:
    try:
        x509.load_pem_x509_certificate(crt.read_bytes())
    except ValueError:
        return False
    return True


_REASONS = {r.value: r for r in x509.ReasonFlags}


def _read_revoked(directory: Path) -> list[tuple[int, str, dt.datetime, str]]:
    path = directory / REVOKED_FILE
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            serial, name, when, reason = line.split("\t")
            out.append((int(serial, 16), name, dt.datetime.fromisoformat(when), reason))
        except ValueError:
            raise PKIError(f"{path}:{n}: expected 'serial<TAB>name<TAB>date<TAB>reason'") from None
    return out


def revoke(directory: Path, name: str, reason: str = "unspecified", ca_dir: Path | None = None) -> Path:
    """Revoke the certificate in ``name.crt`` (its serial goes on the CRL) and re-sign ``crl.pem``."""
    _check_name(name)
    if reason not in _REASONS:
        raise PKIError(f"--reason {reason!r}: expected one of {', '.join(sorted(_REASONS))}")
    crt = directory / f"{name}.crt"
    try:
        serial = x509.load_pem_x509_certificate(crt.read_bytes()).serial_number
    except FileNotFoundError:
        raise PKIError(f"{crt}: no certificate issued under that name") from None
    except ValueError as exc:
        raise PKIError(f"{crt}: not a PEM certificate: {exc}") from None
    ca_home = ca_dir or directory  # revoked.txt and crl.pem live beside the CA that issued the certificate
    entries = _read_revoked(ca_home)
    if serial not in {e[0] for e in entries}:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        line = f"{serial:x}\t{name}\t{now.isoformat()}\t{reason}\n"
        path = ca_home / REVOKED_FILE
        write_atomic(path, (path.read_bytes() if path.exists() else b"") + line.encode())
    return write_crl(ca_home)


def write_crl(directory: Path, days: int = CRL_DAYS) -> Path:
    """(Re-)sign ``directory/crl.pem`` from ``directory/revoked.txt`` with the CA in ``directory``:
    this update now, the next in ``days`` days."""
    ca = load_ca(directory)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for serial, _, when, reason in _read_revoked(directory):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(_REASONS[reason]), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.key, hashes.SHA384())
    path = directory / CRL_FILE
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class CrlInfo:
    """A verified CRL: what it revokes, its CRL number (the order of CRLs) and until when it is current."""

    serials: frozenset[int]
    number: int
    next_update: dt.datetime | None

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.next_update is not None and self.next_update < (now or dt.datetime.now(dt.UTC))


def read_crl(crl_pem: bytes, ca_certs: list[x509.Certificate]) -> CrlInfo:
    """A CRL whose signature verifies against one of ``ca_certs`` (PKIError if not)."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise PKIError(f"not a PEM CRL: {exc}") from None
    signers = [c for c in ca_certs if c.subject == crl.issuer]
    if not any(crl.is_signature_valid(c.public_key()) for c in signers):  # type: ignore[arg-type]
        raise PKIError("the CRL's signature does not verify against the project CA")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = -1  # fedfhe-pki always writes one; a CRL without it is older than any that has one
    return CrlInfo(frozenset(r.serial_number for r in crl), number, crl.next_update_utc)


def revoked_serials(crl_pem: bytes, ca_certs: list[x509.Certificate]) -> frozenset[int]:
    """The serials a CRL revokes, once its signature verifies against one of ``ca_certs`` (PKIError if not)."""
    return read_crl(crl_pem, ca_certs).serials


def supernode_keypair(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """An EC key pair for Flower SuperNode authentication (both in OpenSSH format)."""
    _check_name(name)
    priv, pub = directory / f"{name}.supernode.key", directory / f"{name}.supernode.pub"
    if priv.exists() and pub.exists() and not force:
        return priv, pub
    key = ec.generate_private_key(ec.SECP384R1())
    # flower-supernode reads the private key with load_ssh_private_key: OpenSSH format.
    ssh_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    write_atomic(priv, ssh_pem, 0o600)
    write_atomic(
        pub,
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
    )
    return priv, pub


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise PKIError(f"{name!r}: names may use letters, digits, '-', '_' and '.' only")


def common_name(cert_pem: bytes) -> str:
    """The CN of a PEM certificate: the owner identity on the inference node."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
