"""The project's own PKI on ``cryptography``: one CA, server and client certificates,
SuperNode authentication key pairs. Private keys are written 0600, atomically.

Layout of a PKI directory::

    ca.crt ca.key                    # the CA (ca.key never leaves the CA's machine; encrypted with a passphrase)
    <name>.crt <name>.key            # server or client certificates (<name>.key only where the key is used)
    <name>.supernode.key/.pub        # SuperNode authentication key pair
    revoked.txt crl.pem              # revoked serials (hex, name, date, reason) and the CA-signed CRL
    issued.txt                       # every certificate the CA signed (serial, name, key fingerprint, not after)

The naming rules live here, once: a certificate's subject is ``O=fedfhe, CN=<name>``;
a server certificate (SuperLink, inference node) has serverAuth and its host names as
SANs; a client certificate (a data owner) has clientAuth, no SANs, and its CN is the
owner id, which must pass the owner-name rule the inference node applies
(:func:`check_owner_name`). Certificate requests made on the hosts themselves are
checked against the same rules (``pki_request``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfhe_common.contracts.bundle import valid_name
from fedfhe_common.pki.pki_passphrase import PKI_ENV, PKI_HINT, PassphraseNeeded, encryption, from_env, load_private_key
from fedfhe_common.runtime.errors import PKIError
from fedfhe_common.runtime.fileio import write_atomic

CA_DAYS = 3650
LEAF_DAYS = 90  # short-lived: `fedfhe-pki renew` re-issues before the end (`list` flags the last RENEW_WITHIN_DAYS)
RENEW_WITHIN_DAYS = 30
CRL_DAYS = 30
REVOKED_FILE = "revoked.txt"
CRL_FILE = "crl.pem"
ISSUED_FILE = "issued.txt"
ORGANIZATION = "fedfhe"
# registry: the shared key registry's PostgreSQL server (inference nodes log in with client certificates).
SERVER_ROLES = ("superlink", "inference", "registry")
CLIENT_ROLE = "client"
ROLES = (*SERVER_ROLES, CLIENT_ROLE)


def private_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None, what: str = "key") -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption(passphrase, what)
    )


def subject_name(cn: str) -> x509.Name:
    """The subject of every certificate the CA issues: ``O=fedfhe, CN=<cn>``."""
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def key_fingerprint(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the public key's DER SubjectPublicKeyInfo, colon-separated hex (as
    ``openssl pkey -pubin -outform DER | sha256sum`` and community.crypto's ``*_info`` modules give)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def _same_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    return key_fingerprint(a) == key_fingerprint(b)


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def init_ca(
    directory: Path, common_name: str = "fedfhe CA", exist_ok: bool = False, passphrase: bytes | None = None
) -> Path:
    """Create ca.crt/ca.key (ca.key encrypted under ``passphrase`` when given); an existing CA is kept
    with exist_ok (its key checked when it can be opened: in the clear or with ``passphrase``), refused otherwise."""
    crt, key_path = directory / "ca.crt", directory / "ca.key"
    if crt.exists() or key_path.exists():
        if exist_ok and crt.exists() and key_path.exists():
            try:
                load_ca(directory, passphrase)
            except PassphraseNeeded:  # kept as it is: nothing here needs the key itself
                _load_cert(crt)
            return crt
        raise PKIError(f"{directory}: a CA already exists (ca.crt/ca.key); refusing to overwrite it")
    encryption(passphrase, "ca.key")  # a too-short passphrase is refused before anything is made
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject_name(common_name))
        .issuer_name(subject_name(common_name))
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
    write_atomic(key_path, private_key_pem(key, passphrase, "ca.key"), 0o600)
    write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM))
    return crt


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"{path}: missing") from None
    except ValueError as exc:
        raise PKIError(f"{path}: not a PEM certificate: {exc}") from None


def load_ca(directory: Path, passphrase: bytes | None = None) -> CA:
    """The CA in ``directory``; an encrypted ca.key needs ``passphrase`` (else $FEDFHE_PKI_PASSPHRASE)."""
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = load_private_key(directory / "ca.key", passphrase or from_env(PKI_ENV), PKI_HINT)
    except FileNotFoundError as exc:
        raise PKIError(f"{exc.filename}: missing; run 'fedfhe-pki init' first") from None
    except ValueError as exc:
        raise PKIError(f"{directory}: CA files are not valid PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{directory}/ca.key: expected an EC key")
    if not _same_key(key.public_key(), cert.public_key()):
        raise PKIError(f"{directory}: ca.key is not the key of ca.crt")
    return CA(cert, key)


def host_names(hosts: list[str]) -> list[x509.GeneralName]:
    """A server certificate's SANs: an IP address where the host parses as one, a DNS name otherwise."""
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def check_lifetime(ca: CA, start: dt.datetime, days: int) -> dt.datetime:
    """The end of a certificate starting at ``start`` for ``days`` days; refused when it would outlive the CA."""
    if days < 1:
        raise PKIError(f"--days {days}: a certificate lives at least one day")
    end = start + dt.timedelta(days=days)
    if end > ca.cert.not_valid_after_utc:
        raise PKIError(f"--days {days}: the certificate would end after the CA "
                       f"({ca.cert.not_valid_after_utc:%Y-%m-%d}); give fewer days, or make a new CA")
    return end


def build_certificate(
    ca: CA,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    *,
    server_hosts: list[str] | None,
    client: bool,
    start: dt.datetime,
    days: int,
) -> x509.Certificate:
    """The one certificate profile: CA:FALSE, serverAuth with ``server_hosts`` as SANs and/or clientAuth,
    the CA's key identifier. `server`, `client`, `sign` and `renew` all issue through here."""
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(check_lifetime(ca, start, days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server_hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(host_names(server_hosts)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


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
    passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    """Issue ``name.crt``/``name.key`` signed by the CA (the key made here: see ``pki_request`` for
    keys made on their own host).

    ``server_hosts`` become SANs and the serverAuth usage; ``client`` adds
    clientAuth (the CN is the identity the inference node uses as owner).
    """
    if not server_hosts and not client:
        raise PKIError(f"{name}: a certificate needs server hosts (SANs) or the client role")
    check_name(name)
    if client:
        check_owner_name(name)
    crt_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if crt_path.exists() and not force:
        return crt_path, key_path
    ca_home = ca_dir or directory
    ca = load_ca(ca_home, passphrase)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    cert = build_certificate(ca, subject_name(name), key.public_key(), server_hosts=server_hosts, client=client,
                             start=start, days=days)
    if crt_path.exists() and _parses(crt_path):  # re-issued with force: the old certificate must stop working
        revoke(directory, name, reason="superseded", ca_dir=ca_dir, ca=ca)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(key_path, private_key_pem(key), 0o600)
    write_certificate(ca_home, crt_path, name, cert)
    return crt_path, key_path


def write_certificate(ca_home: Path, crt_path: Path, name: str, cert: x509.Certificate) -> Path:
    """Record ``cert`` in the CA's issued.txt, then write it to ``crt_path``."""
    record_issued(ca_home, name, cert)
    write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path


def _parses(crt: Path) -> bool:
    try:
        x509.load_pem_x509_certificate(crt.read_bytes())
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Issued:
    """One line of issued.txt: a certificate the CA signed."""

    serial: int
    name: str
    fingerprint: str
    not_after: dt.datetime


def _read_records(path: Path, fields: str, date_at: int) -> list[tuple[int, str, list[str], dt.datetime]]:
    """The lines of one of the CA's tab-separated records (issued.txt, revoked.txt): serial (hex), name,
    all four fields, and the date in field ``date_at``; ``fields`` names them for the error."""
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            parts = line.split("\t")
            if len(parts) != 4:
                raise ValueError(line)
            out.append((int(parts[0], 16), parts[1], parts, dt.datetime.fromisoformat(parts[date_at])))
        except ValueError:
            raise PKIError(f"{path}:{n}: expected '{fields}'") from None
    return out


def read_issued(ca_home: Path) -> list[Issued]:
    return [Issued(serial, name, parts[2], when) for serial, name, parts, when in
            _read_records(ca_home / ISSUED_FILE, "serial<TAB>name<TAB>key sha256<TAB>not after", 3)]


def record_issued(ca_home: Path, name: str, cert: x509.Certificate) -> None:
    """Append ``cert`` to issued.txt (once per serial): `revoke NAME` then reaches every live certificate
    of NAME, a renewed one and the one it renewed alike."""
    entries = read_issued(ca_home)
    if cert.serial_number in {e.serial for e in entries}:
        return
    path = ca_home / ISSUED_FILE
    line = (f"{cert.serial_number:x}\t{name}\t{key_fingerprint(cert.public_key())}\t"
            f"{cert.not_valid_after_utc.isoformat()}\n")
    head = path.read_bytes() if path.exists() else b"# serial\tname\tpublic key sha256\tnot after\n"
    write_atomic(path, head + line.encode())


_REASONS = {r.value: r for r in x509.ReasonFlags}


def _read_revoked(directory: Path) -> list[tuple[int, str, dt.datetime, str]]:
    return [(serial, name, when, parts[3]) for serial, name, parts, when in
            _read_records(directory / REVOKED_FILE, "serial<TAB>name<TAB>date<TAB>reason", 2)]


def is_revoked(ca_home: Path, serial: int) -> bool:
    """Whether ``serial`` is on the CA's revoked list (revoked.txt, from which crl.pem is signed)."""
    return serial in {e[0] for e in _read_revoked(ca_home)}


def revoked_key(ca_home: Path, public_key: CertificatePublicKeyTypes) -> str | None:
    """Why ``public_key`` may not be certified again: a certificate of it was revoked for a reason
    other than being superseded (keyCompromise, cessationOfOperation, ...); None when it may."""
    fingerprint = key_fingerprint(public_key)
    serials = {e.serial: e.name for e in read_issued(ca_home) if e.fingerprint == fingerprint}
    for serial, name, _, reason in _read_revoked(ca_home):
        if serial in serials and reason != "superseded":
            return f"this key's certificate {serial:x} ({name}) was revoked ({reason}): a new key is needed"
    return None


def revoke(
    directory: Path,
    name: str,
    reason: str = "unspecified",
    ca_dir: Path | None = None,
    *,
    passphrase: bytes | None = None,
    ca: CA | None = None,
) -> Path:
    """Revoke the certificate in ``name.crt`` and every other unexpired one issued.txt lists for
    ``name`` (a renewal keeps the key: both must stop working), and re-sign ``crl.pem``."""
    check_name(name)
    if reason not in _REASONS:
        raise PKIError(f"--reason {reason!r}: expected one of {', '.join(sorted(_REASONS))}")
    ca_home = ca_dir or directory  # revoked.txt and crl.pem live beside the CA that issued the certificate
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    serials = [e.serial for e in read_issued(ca_home) if e.name == name and e.not_after > now]
    crt = directory / f"{name}.crt"
    try:
        serials.append(x509.load_pem_x509_certificate(crt.read_bytes()).serial_number)
    except FileNotFoundError:
        if not serials:
            raise PKIError(f"{crt}: no certificate issued under that name") from None
    except ValueError as exc:
        raise PKIError(f"{crt}: not a PEM certificate: {exc}") from None
    ca = ca or load_ca(ca_home, passphrase)  # before revoked.txt changes: no passphrase, nothing written
    known = {e[0] for e in _read_revoked(ca_home)}
    lines = "".join(f"{s:x}\t{name}\t{now.isoformat()}\t{reason}\n" for s in dict.fromkeys(serials) if s not in known)
    if lines:
        path = ca_home / REVOKED_FILE
        write_atomic(path, (path.read_bytes() if path.exists() else b"") + lines.encode())
    return write_crl(ca_home, ca=ca)


def write_crl(directory: Path, days: int = CRL_DAYS, *, passphrase: bytes | None = None, ca: CA | None = None) -> Path:
    """(Re-)sign ``directory/crl.pem`` from ``directory/revoked.txt`` with the CA in ``directory``:
    this update now, the next in ``days`` days."""
    ca = ca or load_ca(directory, passphrase)
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
    """An EC key pair for Flower SuperNode authentication (both in OpenSSH format).

    Needs no CA: it runs on the owner's own host, and only ``<name>.supernode.pub`` travels
    (to the coordinator's ``supernode_public_keys``)."""
    check_name(name)
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


# Names of the CA's own files: a certificate named so would overwrite ca.crt (a request with CN=ca).
RESERVED_NAMES = frozenset({"ca", "crl", "release", "issued", "revoked"})


def check_name(name: str) -> None:
    """A certificate or key name: it becomes a file name in the PKI directory."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise PKIError(f"{name!r}: names may use letters, digits, '-', '_' and '.' only")
    if name.lower() in RESERVED_NAMES:
        raise PKIError(f"{name!r}: reserved for the CA's own files ({', '.join(sorted(RESERVED_NAMES))})")


def check_owner_name(name: str) -> None:
    """A data owner's id, the CN of its client certificate: the rule the inference node applies to the CN
    (``fedfhe_common.contracts.bundle.valid_name``), so no certificate is issued that the node would refuse."""
    if not valid_name(name):
        raise PKIError(f"{name[:80]!r} is not an owner name: use 1-64 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit")


def cert_role(cert: x509.Certificate) -> str:
    """``ca``, ``server`` (serverAuth: SuperLink or inference node), ``client`` (a data owner) or ``unknown``."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "unknown"
    return "server" if ExtendedKeyUsageOID.SERVER_AUTH in usages else (
        "client" if ExtendedKeyUsageOID.CLIENT_AUTH in usages else "unknown")


def cert_hosts(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The DNS and IP SANs as the strings ``server --host`` takes (DNS names first)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + [
        str(v) for v in ext.get_values_for_type(x509.IPAddress)]


def name_cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def common_name(cert_pem: bytes) -> str:
    """The CN of a PEM certificate: the owner identity on the inference node."""
    return name_cn(x509.load_pem_x509_certificate(cert_pem).subject)
