"""Keys made where they are used: a host makes its key and a certificate request (CSR), the CA signs it.

``fedfhe-pki request ROLE NAME`` runs on the host that will use the key: it writes
``NAME.key`` (0600, never printed) and ``NAME.csr``, a PKCS#10 request with the subject,
usage and SANs the role's certificate will have. Only the CSR travels to the CA.

``fedfhe-pki sign NAME.csr --role ROLE`` runs beside the CA: it shows the subject, the
SANs, the role and the public key's SHA-256 fingerprint, checks the request against the
naming rules of ``pki`` (the same rules the direct ``server``/``client`` commands follow)
and refuses, naming every reason, a request that breaks one: a forged self-signature, a
weak or unsupported key, a subject other than ``O=fedfhe, CN=<name>``, a client CN that
is no owner name, a usage of another role, SANs the role may not have or the CA did not
approve (``--san``), CA extensions, or any extension it does not know. The certificate is
built by ``pki.build_certificate``, the one profile, never from the request's extensions.

``fedfhe-pki renew NAME`` re-issues NAME's certificate for a new lifetime with the same
subject and SANs: for the same public key (nothing travels: the CA holds NAME.crt), for a
new key made here (``--new-key``, only where NAME.key lives beside the CA) or for the key
of a fresh request from NAME's host (``--csr``, checked as ``sign`` checks it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfhe_common.pki.ca import (
    CA,
    CLIENT_ROLE,
    LEAF_DAYS,
    ROLES,
    SERVER_ROLES,
    build_certificate,
    cert_role,
    check_name,
    check_owner_name,
    host_names,
    is_revoked,
    key_fingerprint,
    load_ca,
    name_cn,
    private_key_pem,
    record_issued,
    revoke,
    revoked_key,
    subject_name,
    write_certificate,
)
from fedfhe_common.runtime.errors import PKIError
from fedfhe_common.runtime.fileio import write_atomic

CSR_SUFFIX = ".csr"
MAX_CSR_BYTES = 64 << 10
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}  # what gRPC's TLS (BoringSSL) signs with
MIN_RSA_BITS = 2048
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_USAGE = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
# What the request of each kind of certificate carries, and which certificate the CA makes of it.
_SERVER, _CLIENT = "server", "client"
_KIND = {**dict.fromkeys(SERVER_ROLES, _SERVER), CLIENT_ROLE: _CLIENT, _SERVER: _SERVER}
_KIND_USAGE = {_SERVER: ExtendedKeyUsageOID.SERVER_AUTH, _CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH}
# Extensions a request may carry: checked below, never copied into the certificate.
_ALLOWED = (x509.BasicConstraints, x509.KeyUsage, x509.ExtendedKeyUsage, x509.SubjectAlternativeName,
            x509.SubjectKeyIdentifier)
_CA_EXTENSIONS = (x509.NameConstraints, x509.PolicyConstraints, x509.InhibitAnyPolicy)


def _kind(role: str) -> str:
    if role not in _KIND:
        raise PKIError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return _KIND[role]


def _usage_name(oid: x509.ObjectIdentifier) -> str:
    return _USAGE.get(oid, getattr(oid, "_name", None) or oid.dotted_string)


def key_description(key: CertificatePublicKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {EC_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def key_problem(key: CertificatePublicKeyTypes) -> str | None:
    """Why a TLS key is not accepted (None when it is): EC P-256/P-384, or RSA of 2048 bits or more."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            return f"its key is on curve {key.curve.name}: use EC P-256 or P-384 (or RSA >= {MIN_RSA_BITS} bits)"
        return None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"its key is RSA {key.key_size}, too weak: use EC P-256/P-384 or RSA >= {MIN_RSA_BITS} bits"
        if key.public_numbers().e != 65537:
            return f"its RSA key has public exponent {key.public_numbers().e}: use 65537"
        return None
    return (f"its key type {key_description(key)} is not supported for TLS here: use EC P-256/P-384 "
            f"or RSA >= {MIN_RSA_BITS} bits")


def _general_name(g: x509.GeneralName) -> str:
    kind = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email",
            x509.UniformResourceIdentifier: "URI", x509.DirectoryName: "dirName",
            x509.RegisteredID: "RID", x509.OtherName: "otherName"}.get(type(g), type(g).__name__)
    value = g.value
    return f"{kind}:{value.rfc4514_string() if isinstance(value, x509.Name) else value}"


def _san_key(g: x509.GeneralName) -> tuple[str, str]:
    """How two SANs are compared: DNS names ignore case, IP addresses compare as addresses."""
    if isinstance(g, x509.DNSName):
        return "DNS", g.value.lower().rstrip(".")
    return type(g).__name__, str(g.value)


@dataclass(frozen=True)
class Summary:
    """What the CA operator must see before signing (and the owner before sending)."""

    file: str
    kind: str  # "request" or "certificate"
    subject: str
    common_name: str
    sans: list[str]
    usages: list[str]
    key: str
    fingerprint: str
    role: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "kind": self.kind, "subject": self.subject, "common_name": self.common_name,
                "role": self.role, "sans": self.sans, "usages": self.usages, "key": self.key,
                "key_sha256": self.fingerprint, **self.extra}

    def lines(self) -> list[str]:
        out = [f"{self.kind}: {self.file}", f"  subject:    {self.subject}"]
        if self.role:
            out.append(f"  role:       {self.role}")
        out += [f"  SANs:       {', '.join(self.sans) or '(none)'}",
                f"  usage:      {', '.join(self.usages) or '(none)'}",
                f"  key:        {self.key}",
                f"  key SHA256: {self.fingerprint}"]
        out += [f"  {k + ':':<11} {v}" for k, v in self.extra.items()]
        return out


def _extensions(obj: x509.Certificate | x509.CertificateSigningRequest) -> tuple[list[x509.Extension[Any]], str]:
    try:
        return list(obj.extensions), ""
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        return [], f"its extensions cannot be read: {exc}"


def _sans_of(exts: list[x509.Extension[Any]]) -> list[x509.GeneralName]:
    for ext in exts:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            return list(ext.value)
    return []


def _usages_of(exts: list[x509.Extension[Any]]) -> list[x509.ObjectIdentifier] | None:
    for ext in exts:
        if isinstance(ext.value, x509.ExtendedKeyUsage):
            return list(ext.value)
    return None


def summarize(obj: x509.Certificate | x509.CertificateSigningRequest, file: str, role: str = "") -> Summary:
    exts, _ = _extensions(obj)
    extra: dict[str, Any] = {}
    if isinstance(obj, x509.Certificate):
        role = role or cert_role(obj)
        extra = {"serial": f"{obj.serial_number:x}", "issuer": obj.issuer.rfc4514_string(),
                 "not_after": obj.not_valid_after_utc.isoformat()}
    key = obj.public_key()
    return Summary(
        file=file, kind="certificate" if isinstance(obj, x509.Certificate) else "request",
        subject=obj.subject.rfc4514_string(), common_name=name_cn(obj.subject),
        sans=[_general_name(g) for g in _sans_of(exts)],
        usages=[_usage_name(u) for u in _usages_of(exts) or []],
        key=key_description(key), fingerprint=key_fingerprint(key), role=role, extra=extra,
    )


def load_request(path: Path) -> x509.CertificateSigningRequest:
    """A PEM (or DER) PKCS#10 request."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CSR_BYTES + 1)
    except FileNotFoundError:
        raise PKIError(f"{path}: no such certificate request") from None
    except OSError as exc:
        raise PKIError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CSR_BYTES:
        raise PKIError(f"{path}: over {MAX_CSR_BYTES} bytes, not a certificate request")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{path}: not a PKCS#10 certificate request (PEM or DER): {str(exc)[:200]}") from None


def check_request(
    csr: x509.CertificateSigningRequest,
    role: str,
    approved_sans: list[str] | None = None,
    *,
    common_name: str | None = None,
) -> list[str]:
    """Every reason ``csr`` may not become a ``role`` certificate (empty: it may).

    ``approved_sans``: the host names the CA approves for a server role (the request may ask for
    these or fewer, nothing else). ``common_name``: the CN the request must have (renewal)."""
    kind = _kind(role)
    problems = []
    if not csr.is_signature_valid:
        problems.append("its self-signature does not verify (altered, or not signed by the key it carries)")
    key = csr.public_key()
    if (why := key_problem(key)) is not None:
        problems.append(why)
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and not isinstance(algorithm, _HASHES):
        problems.append(f"it is signed with {getattr(algorithm, 'name', 'an unknown hash')}: use SHA-256 or better")
    problems += _subject_problems(csr.subject, kind, common_name)
    exts, unreadable = _extensions(csr)
    if unreadable:
        return [*problems, unreadable]
    problems += _extension_problems(exts, role, kind, approved_sans)
    return problems


def _subject_problems(subject: x509.Name, kind: str, expected_cn: str | None) -> list[str]:
    problems = []
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    others = [a for a in subject if a.oid not in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)]
    orgs = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(cns) != 1:
        problems.append(f"its subject has {len(cns)} common names (CN): exactly one is needed")
    if others or len(orgs) > 1 or any(o.value != "fedfhe" for o in orgs):
        problems.append(f"its subject {subject.rfc4514_string()!r} is not O=fedfhe,CN=<name>: the certificate "
                        "would not say what was asked")
    if len(cns) == 1:
        cn = cns[0].value if isinstance(cns[0].value, str) else ""
        try:
            (check_owner_name if kind == _CLIENT else check_name)(cn)
        except PKIError as exc:
            problems.append(f"its CN: {exc}")
        if expected_cn is not None and cn != expected_cn:
            problems.append(f"its CN {cn!r} is not {expected_cn!r}, the name expected for it")
    return problems


def _extension_problems(
    exts: list[x509.Extension[Any]], role: str, kind: str, approved_sans: list[str] | None
) -> list[str]:
    problems = []
    for ext in exts:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and (value.ca or value.path_length is not None):
            problems.append("it asks to be a CA (basicConstraints CA:TRUE)")
        elif isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            problems.append("it asks for the CA usages keyCertSign/cRLSign")
        elif isinstance(value, _CA_EXTENSIONS):
            problems.append(f"it asks for {type(value).__name__}, an extension of CA certificates")
        elif not isinstance(value, _ALLOWED):
            problems.append(f"it asks for extension {getattr(ext.oid, '_name', '') or ext.oid.dotted_string} "
                            f"({ext.oid.dotted_string}), which fedfhe certificates do not have")
    usages = _usages_of(exts)
    want = _KIND_USAGE[kind]
    if usages is None:
        problems.append(f"it names no extendedKeyUsage: a {role} request asks for {_usage_name(want)}")
    elif set(usages) != {want}:
        other = [_usage_name(u) for u in usages if u != want]
        what = ("a server certificate" if ExtendedKeyUsageOID.SERVER_AUTH in usages and kind == _CLIENT
                else "a client certificate" if ExtendedKeyUsageOID.CLIENT_AUTH in usages and kind == _SERVER
                else "other usages")
        problems.append(f"role mismatch: it asks for {', '.join(other) or 'no ' + _usage_name(want)} ({what}); "
                        f"a {role} certificate has {_usage_name(want)} only")
    sans = _sans_of(exts)
    if kind == _CLIENT:
        if sans:
            problems.append(f"a client certificate has no SANs (the owner is its CN); it asks for "
                            f"{', '.join(_general_name(g) for g in sans)}")
        return problems
    if not sans:
        problems.append(f"it asks for no SANs: a {role} certificate names its hosts (DNS names, IP addresses)")
    odd = [g for g in sans if not isinstance(g, x509.DNSName | x509.IPAddress)]
    if odd:
        problems.append(f"SANs other than DNS names and IP addresses: {', '.join(_general_name(g) for g in odd)}")
    if approved_sans is None:
        problems.append(f"no SANs approved: give the {role}'s host names with --san (repeat)")
    else:
        allowed = {_san_key(g) for g in host_names(approved_sans)}
        extra = [g for g in sans if isinstance(g, x509.DNSName | x509.IPAddress) and _san_key(g) not in allowed]
        if extra:
            problems.append(f"it asks for SANs not approved with --san: {', '.join(_general_name(g) for g in extra)}")
    return problems


def _hosts(sans: list[x509.GeneralName]) -> list[str]:
    """SANs (DNS, IP) as ``server --host`` strings, in their order."""
    return [str(g.value) for g in sans if isinstance(g, x509.DNSName | x509.IPAddress)]


# --- on the host that will use the key -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    key: Path
    csr: Path
    new_key: bool
    summary: Summary


def _load_own_key(path: Path) -> PrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{path}: not an unencrypted PEM private key: {str(exc)[:200]} "
                       "(--new-key replaces it)") from None
    if (why := key_problem(key.public_key())) is not None:  # type: ignore[arg-type]
        raise PKIError(f"{path}: {why} (--new-key replaces it)")
    return key


def make_request(out: Path, role: str, name: str, sans: list[str] | None = None, *, new_key: bool = False,
                 file_name: str = "") -> Request:
    """``out/NAME.key`` (kept when it exists, unless ``new_key``) and ``out/NAME.csr`` for ``role``.

    ``file_name`` names the two files instead of NAME (a host's configs name its key by role:
    ``superlink.key``, ``client.key``), the certificate's CN stays NAME."""
    kind = _kind(role)
    (check_owner_name if kind == _CLIENT else check_name)(name)
    sans = list(dict.fromkeys(sans or []))
    if kind == _CLIENT:
        if sans:
            raise PKIError(f"{name}: a client certificate has no SANs (the owner is its CN): drop --san")
    elif not sans:
        raise PKIError(f"{name}: a {role} certificate names its hosts: give them with --san (repeat)")
    stem = file_name or name
    check_name(stem)
    key_path, csr_path = out / f"{stem}.key", out / f"{stem}{CSR_SUFFIX}"
    made = new_key or not key_path.exists()
    key: Any = ec.generate_private_key(ec.SECP256R1()) if made else _load_own_key(key_path)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(name))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_KIND_USAGE[kind]]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(host_names(sans)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    if made:
        write_atomic(key_path, private_key_pem(key), 0o600)
    write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return Request(key_path, csr_path, made, summarize(csr, str(csr_path), role))


# --- beside the CA -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    crt: Path
    summary: Summary
    notes: list[str]


def sign_request(
    directory: Path,
    csr_path: Path,
    role: str,
    *,
    sans: list[str] | None = None,
    days: int = LEAF_DAYS,
    force: bool = False,
    passphrase: bytes | None = None,
    ca_dir: Path | None = None,
    review: Callable[[Summary], None] | None = None,
    name: str | None = None,
) -> Signed:
    """Check ``csr_path`` as a ``role`` request and write ``directory/NAME.crt`` (NAME = its CN).

    ``name``: the CN the request must carry (automation passes the host's own name: a host must not
    obtain, or with ``force`` replace, another host's certificate).

    ``review(summary)`` is called with what the request asks before anything is decided (the CLI
    prints it). Nothing is written when the request is refused; no private key is ever written."""
    kind = _kind(role)
    if kind == _CLIENT and sans:
        raise PKIError("--san: a client certificate has no SANs (the owner is its CN)")
    csr = load_request(csr_path)
    summary = summarize(csr, str(csr_path), role)
    if review is not None:
        review(summary)
    problems = check_request(csr, role, sans if kind == _SERVER else None, common_name=name)
    if problems:
        raise PKIError(f"{csr_path.name} refused for role {role}: " + "; ".join(problems))
    name = summary.common_name
    crt_path = directory / f"{name}.crt"
    old = _existing(crt_path)
    if crt_path.exists() and not force:
        raise PKIError(f"{crt_path} exists: renew it (fedfhe-pki renew {name} --csr {csr_path}), "
                       "or --force to replace it (its certificate is revoked if the key differs)")
    ca_home = ca_dir or directory
    ca = load_ca(ca_home, passphrase)
    if (why := revoked_key(ca_home, csr.public_key())) is not None:
        raise PKIError(f"{csr_path.name} refused: {why}")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = build_certificate(ca, subject_name(name), csr.public_key(),
                             server_hosts=_hosts(_sans_of(_extensions(csr)[0])) if kind == _SERVER else None,
                             client=kind == _CLIENT, start=start, days=days)
    notes = []
    if old is not None and _issued_by(old, ca):
        record_issued(ca_home, name, old)  # (once) issued before issued.txt: `revoke NAME` must still reach it
    if old is not None and key_fingerprint(old.public_key()) != summary.fingerprint:
        revoke(directory, name, reason="superseded", ca_dir=ca_dir, ca=ca)
        notes.append(f"{name}.crt of the previous key (serial {old.serial_number:x}) revoked as superseded")
    directory.mkdir(parents=True, exist_ok=True)
    write_certificate(ca_home, crt_path, name, cert)
    stray = directory / f"{name}.key"
    if stray.exists() and _key_of(stray) != summary.fingerprint:
        notes.append(f"{stray} is not the key of the new certificate (that key stays on its host): remove it")
    return Signed(crt_path, summarize(cert, str(crt_path), role), notes)


def _issued_by(cert: x509.Certificate, ca: CA) -> bool:
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_of(path: Path) -> str:
    """The public key fingerprint of an unencrypted private key file ("" if it cannot be read)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return ""
    return key_fingerprint(key.public_key())  # type: ignore[arg-type]


def _existing(crt_path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(crt_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class Renewed:
    crt: Path
    renewed: bool
    same_key: bool
    old_serial: int
    summary: Summary
    reason: str = ""


def renew(
    directory: Path,
    name: str,
    *,
    days: int = LEAF_DAYS,
    new_key: bool = False,
    csr_path: Path | None = None,
    within_days: int | None = None,
    passphrase: bytes | None = None,
    ca_dir: Path | None = None,
    now: dt.datetime | None = None,
) -> Renewed:
    """Re-issue ``directory/NAME.crt`` for ``days`` days with the same subject, SANs and usages.

    The key: the same public key (default; NAME.key, if here, must match), a new key made here
    (``new_key``: NAME.key must be here) or the key of ``csr_path`` (checked as ``sign`` checks,
    with the old certificate's CN and SANs as what is approved). A changed key revokes the old
    certificate (superseded); the same key does not: `revoke NAME` reaches both through issued.txt.
    ``within_days``: renew only if the certificate ends within that many days."""
    check_name(name)
    if new_key and csr_path is not None:
        raise PKIError("--new-key and --csr: the new key is made here or on its host, not both")
    crt_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    old = _existing(crt_path)
    if old is None:
        raise PKIError(f"{crt_path}: no readable certificate to renew (issue one with server, client or sign)")
    now = now or dt.datetime.now(dt.UTC)
    left = old.not_valid_after_utc - now
    if within_days is not None and left > dt.timedelta(days=within_days):
        return Renewed(crt_path, False, True, old.serial_number, summarize(old, str(crt_path)),
                       f"{left.days} days left, more than {within_days}: not renewed")
    role = cert_role(old)
    if role not in (_SERVER, _CLIENT):
        raise PKIError(f"{crt_path}: a {role} certificate is not renewed here")
    old_exts, _ = _extensions(old)
    hosts = _hosts(_sans_of(old_exts))
    usages = _usages_of(old_exts) or []
    client = ExtendedKeyUsageOID.CLIENT_AUTH in usages
    ca_home = ca_dir or directory
    ca = load_ca(ca_home, passphrase)
    if not _issued_by(old, ca):
        raise PKIError(f"{crt_path}: not issued by the CA in {ca_home}; it cannot be renewed by it")
    fresh_key = None
    if csr_path is not None:
        csr = load_request(csr_path)
        problems = check_request(csr, role, hosts if role == _SERVER else None, common_name=name_cn(old.subject))
        if problems:
            raise PKIError(f"{csr_path.name} refused for renewing {name}: " + "; ".join(problems))
        public_key = csr.public_key()
    elif new_key:
        if not key_path.exists():
            raise PKIError(f"{key_path}: not here, its key lives on its own host: make a new request there "
                           f"(fedfhe-pki request ROLE {name} --new-key ...) and renew with --csr")
        fresh_key = ec.generate_private_key(ec.SECP256R1())
        public_key = fresh_key.public_key()
    else:
        public_key = old.public_key()
        if key_path.exists():
            mine = _load_own_key(key_path)
            if key_fingerprint(mine.public_key()) != key_fingerprint(public_key):  # type: ignore[arg-type]
                raise PKIError(f"{key_path} is not the key of {crt_path}: renew with --new-key")
    same_key = key_fingerprint(public_key) == key_fingerprint(old.public_key())
    if same_key and is_revoked(ca_home, old.serial_number):
        raise PKIError(f"{crt_path} is revoked: renewing it would bring its key back; renew with a new key "
                       "(--new-key, or --csr with a fresh request)")
    if (why := revoked_key(ca_home, public_key)) is not None:
        raise PKIError(f"renewing {name} refused: {why}")
    start = now - dt.timedelta(minutes=5)
    cert = build_certificate(ca, old.subject, public_key, server_hosts=hosts or None, client=client, start=start,
                             days=days)
    record_issued(ca_home, name, old)  # (once) issued before issued.txt: `revoke NAME` must still reach it
    if not same_key:
        revoke(directory, name, reason="superseded", ca_dir=ca_dir, ca=ca)
    if fresh_key is not None:
        write_atomic(key_path, private_key_pem(fresh_key), 0o600)
    write_certificate(ca_home, crt_path, name, cert)
    return Renewed(crt_path, True, same_key, old.serial_number, summarize(cert, str(crt_path)))


def describe(path: Path) -> Summary:
    """A certificate request or a certificate (PEM) as ``sign`` shows it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PKIError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if b"CERTIFICATE REQUEST" in data or path.suffix == CSR_SUFFIX:
        return summarize(load_request(path), str(path))
    try:
        return summarize(x509.load_pem_x509_certificate(data), str(path))
    except ValueError:
        raise PKIError(f"{path}: neither a PEM certificate nor a certificate request") from None


def check_pair(crt_path: Path, key_path: Path | None, ca_path: Path | None) -> list[str]:
    """What is wrong with a certificate received from the CA (empty: nothing): its key is ``key_path``'s,
    it was issued directly by ``ca_path``, it is current."""
    problems = []
    try:
        cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"{crt_path}: not a readable PEM certificate: {exc}"]
    if key_path is not None:
        key = _load_own_key(key_path)
        if key_fingerprint(key.public_key()) != key_fingerprint(cert.public_key()):  # type: ignore[arg-type]
            problems.append(f"{crt_path} is not for the key in {key_path}")
    if ca_path is not None:
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_path.read_bytes()))
        except (OSError, ValueError, TypeError, InvalidSignature):
            problems.append(f"{crt_path} was not issued by the CA in {ca_path}")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(f"{crt_path} is not valid now ({cert.not_valid_before_utc:%Y-%m-%d} to "
                        f"{cert.not_valid_after_utc:%Y-%m-%d})")
    return problems


__all__ = ["Request", "Renewed", "Signed", "Summary", "check_pair", "check_request", "describe",
           "key_problem", "load_request", "make_request", "renew", "sign_request", "summarize"]
