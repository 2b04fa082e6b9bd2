"""Strict owner identity from the mutual-TLS client certificate, checked before any RPC runs.

gRPC's handshake only proves the chain ends at the project CA. An owner name
is a key to evaluation keys, so the certificate must also have the exact shape
the project's PKI issues: one common name that is a plain owner name (a CN of
``owner-0\\x00evil`` must not read as ``owner-0``), an end-entity certificate
(CA:FALSE) with the clientAuth usage, signed directly by the project CA (not by
a CA certificate that the project CA once issued). The CN is read from the
certificate itself, never from gRPC's C-string view of it.

Revocation (``crl_file`` in inference.yaml): a certificate whose serial is on
the project CRL (``fedfhe-pki revoke``) is refused too. The CRL must verify
against the CA; it is re-read when the file changes (checked on each call, one
stat) or on SIGHUP. A CRL that fails to verify stops start-up; at runtime the
last good one stays in force and the failure is logged.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfhe_common.contracts.bundle import valid_name
from fedfhe_common.pki.ca import CrlInfo, read_crl
from fedfhe_common.pki.crl_mark import accept as accept_crl
from fedfhe_common.runtime.errors import ConfigError, PKIError

from .display import shown
from .errors import ServiceError

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
log = logging.getLogger("fedfhe.inference")


@dataclass(frozen=True)
class Verdict:
    """The owner name, or why the certificate is refused (cached per certificate)."""

    owner: str = ""
    serial: int = 0
    code: grpc.StatusCode | None = None
    message: str = ""

    def owner_or_raise(self) -> str:
        if self.code is not None:
            raise ServiceError(self.code, self.message)
        return self.owner


def _refuse(message: str, code: grpc.StatusCode = DENIED) -> Verdict:
    return Verdict(code=code, message=message)


@functools.lru_cache(maxsize=4096)
def judge(pem: bytes, ca_ders: tuple[bytes, ...] = ()) -> Verdict:
    """Check one client certificate (PEM); ``ca_ders`` empty skips the direct-issuer check."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return _refuse("the client certificate cannot be parsed", UNAUTHENTICATED)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return _refuse(f"the client certificate must have exactly one common name (CN); it has {len(names)}")
    cn = names[0].value
    if not isinstance(cn, str) or not all(ch.isprintable() for ch in cn) or not valid_name(cn):
        return _refuse(
            f"the client certificate's common name {shown(cn, 80)} is not an owner name: use 1-64 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit, no control characters"
        )
    try:
        ca_flag = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return _refuse("the client certificate has no basicConstraints: owners need an end-entity (CA:FALSE) "
                       "certificate from the project CA")
    if ca_flag:
        return _refuse("the client certificate is a CA certificate (CA:TRUE): owners need an end-entity "
                       "(CA:FALSE) certificate from the project CA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if usage.key_cert_sign or usage.crl_sign:
            return _refuse("the client certificate may sign certificates (keyCertSign/cRLSign): refused")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return _refuse("the client certificate is not issued for client authentication (clientAuth)")
    if ca_ders and not any(_issued_by(cert, der) for der in ca_ders):
        return _refuse("the client certificate was not issued directly by the project CA")
    return Verdict(owner=cn, serial=cert.serial_number)


def _issued_by(cert: x509.Certificate, ca_der: bytes) -> bool:
    try:
        cert.verify_directly_issued_by(x509.load_der_x509_certificate(ca_der))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def peer_certificate(auth: Mapping[str, Sequence[bytes]]) -> bytes:
    """The one PEM certificate the TLS layer verified (UNAUTHENTICATED without exactly one)."""
    pems = auth.get("x509_pem_cert") or []
    if len(pems) != 1:
        raise ServiceError(UNAUTHENTICATED, "a client certificate from the project CA is required")
    return pems[0]


class Revocations:
    """The revoked serials of crl_file, verified against the CA, re-read when the file changes or on reload().

    Anti-rollback: a CRL with a lower CRL number than the newest this process has accepted
    (an older CRL would un-revoke owners) is refused and the last good one stays in force, and
    so is an expired CRL (past its next update) unless ``allow_expired`` (inference.yaml
    ``allow_expired_crl``). At start an expired or unreadable CRL stops the node with the reason.
    """

    def __init__(self, path: Path, cas: list[x509.Certificate], allow_expired: bool = False,
                 mark: Path | None = None) -> None:
        """``mark``: where the newest accepted CRL number is kept across restarts (crl_mark)."""
        self.path, self.cas, self.allow_expired, self.mark = Path(path), cas, allow_expired, mark
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self.number = -2
        try:
            info, self._stamp = self._read()
            self._accept(info)
        except (OSError, PKIError) as exc:
            raise ConfigError(f"crl_file {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        self.serials, self.number = info.serials, info.number

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> tuple[CrlInfo, tuple[int, int, int]]:
        stamp = self._stat()
        return read_crl(self.path.read_bytes(), self.cas), stamp

    def _accept(self, info: CrlInfo) -> None:
        """PKIError when ``info`` may not replace the CRL in force (crl_mark.accept, with this node's mark)."""
        accept_crl(info, self.mark, self.allow_expired, floor=self.number)

    def reload(self, force: bool = True) -> None:
        """Re-read the CRL (if it changed, or always with ``force``); a bad one is logged, the last good kept."""
        with self._lock:
            try:
                if not force and self._stat() == self._stamp:
                    return
                info, stamp = self._read()
                self._accept(info)
            except (OSError, PKIError) as exc:
                try:
                    self._stamp = self._stat()  # log a bad file once, not on every call
                except OSError:
                    self._stamp = None
                log.error("crl_file %s: %s; keeping the last good CRL (%d revoked)", self.path,
                          getattr(exc, "strerror", None) or exc, len(self.serials))
                return
            if info.serials != self.serials:
                log.info("crl_file %s: %d revoked certificate(s)", self.path, len(info.serials))
            self.serials, self.number, self._stamp = info.serials, info.number, stamp

    def current(self) -> frozenset[int]:
        try:
            changed = self._stat() != self._stamp
        except OSError:
            changed = self._stamp is not None
        if changed:
            self.reload(force=False)
        return self.serials


class Identity:
    """The node's identity policy: every check above, with the project CA's certificate(s) from ca_certfile."""

    def __init__(self, ca_pem: bytes, crl_file: Path | None = None, allow_expired_crl: bool = False,
                 crl_mark: Path | None = None) -> None:
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise ConfigError(f"ca_certfile: not PEM certificates: {exc}") from None
        self.ca_ders = tuple(c.public_bytes(Encoding.DER) for c in cas)
        self.revocations = Revocations(crl_file, cas, allow_expired_crl, crl_mark) if crl_file else None

    @classmethod
    def from_file(cls, path: Path, crl_file: Path | None = None, allow_expired_crl: bool = False,
                  crl_mark: Path | None = None) -> Identity:
        try:
            ca_pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"ca_certfile {path}: cannot read: {exc.strerror}") from None
        return cls(ca_pem, crl_file, allow_expired_crl, crl_mark)

    def reload(self) -> None:
        """SIGHUP: re-read the CRL now."""
        if self.revocations is not None:
            self.revocations.reload()

    def revoked(self) -> frozenset[int]:
        """The serials on the CRL in force (none without a crl_file)."""
        return self.revocations.current() if self.revocations is not None else frozenset()

    @staticmethod
    def caller_serial(context: grpc.ServicerContext) -> str:
        """The hex serial of the caller's client certificate (the Guard has already judged it)."""
        cert = x509.load_pem_x509_certificate(peer_certificate(context.auth_context()))
        return f"{cert.serial_number:x}"

    def owner(self, context: grpc.ServicerContext) -> str:
        """The caller's owner name; ServiceError (UNAUTHENTICATED or PERMISSION_DENIED) otherwise."""
        verdict = judge(peer_certificate(context.auth_context()), self.ca_ders)
        owner = verdict.owner_or_raise()
        if self.revocations is not None and verdict.serial in self.revocations.current():
            raise ServiceError(UNAUTHENTICATED, f"the client certificate of owner {owner!r} (serial "
                               f"{verdict.serial:x}) is revoked: it is on the project CRL")
        return owner
