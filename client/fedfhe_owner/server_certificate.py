"""Refuse a server (the SuperLink, the inference node) whose certificate is on the project CRL.

grpcio's Python API has no CRL option (gRPC core's ``crl_directory`` is not
exposed) and ``flower-supernode`` takes none, so before gRPC connects the owner
opens one TLS connection of its own to the same address, verifies the chain
against the project CA, and looks the presented certificate's serial up in the
CA-signed CRL (``crl_file`` in owner.yaml). This stops a decommissioned or
stolen server certificate still answering at the server's address. It does not
stop a party that sits on the path, relays this one check to the genuine server
and then answers gRPC itself with the revoked key: that needs CRL checking inside
gRPC's own handshake. docs/operator-guide.md's "Revoking a server" says what to do then
(re-key the CA).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from cryptography import x509

from fedfhe_common.pki.ca import read_crl
from fedfhe_common.pki.crl_mark import accept as accept_crl
from fedfhe_common.runtime.errors import ConfigError, FedfheError, PKIError


class RevokedServerError(FedfheError):
    """The server presented a certificate that the project CRL revokes."""


class ServerUnreachableError(FedfheError):
    """No TLS handshake with the server could be completed."""


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None


def presented_certificate(
    address: str, ca_file: Path, *, client_cert: Path | None = None, client_key: Path | None = None,
    timeout: float = 10.0,
) -> x509.Certificate:
    """The certificate the server at ``address`` presents, its chain verified against ``ca_file``.

    The host name is not checked here (gRPC checks it on its own connection).
    """
    host, port = split_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    try:
        ctx.load_verify_locations(cadata=_read(ca_file, "CA certificate").decode("ascii", "replace"))
        if client_cert and client_key:
            ctx.load_cert_chain(str(client_cert), str(client_key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"CA or client certificate ({ca_file}, {client_cert}): {exc}") from None
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=None) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise FedfheError(f"{address}: the server's certificate does not verify against {ca_file}: "
                          f"{exc.verify_message}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ServerUnreachableError(f"{address}: no TLS handshake: {exc}") from None
    if not der:
        raise FedfheError(f"{address}: the server presented no certificate")
    return x509.load_der_x509_certificate(der)


def refuse_if_revoked(
    address: str, ca_file: Path, crl_file: Path, what: str, *, client_cert: Path | None = None,
    client_key: Path | None = None, timeout: float = 10.0, mark: Path | None = None, allow_expired: bool = False,
) -> x509.Certificate:
    """Raise RevokedServerError when the server's certificate is on the CRL; return the certificate.

    The CRL itself must be no older (by CRL number) than the newest this owner accepted, kept in ``mark``
    (its state dir's crl-number), and not expired unless ``allow_expired`` (owner.yaml allow_expired_crl).
    """
    try:
        cas = x509.load_pem_x509_certificates(_read(ca_file, "CA certificate"))
    except ValueError as exc:
        raise ConfigError(f"CA certificate {ca_file}: not PEM certificates: {exc}") from None
    try:
        info = read_crl(_read(crl_file, "crl_file"), cas)
        accept_crl(info, mark, allow_expired)
        revoked = info.serials
    except PKIError as exc:
        raise ConfigError(f"crl_file {crl_file}: {exc}") from None
    cert = presented_certificate(address, ca_file, client_cert=client_cert, client_key=client_key,
                                 timeout=timeout)
    if cert.serial_number in revoked:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = cn[0].value if cn else "?"
        raise RevokedServerError(
            f"{what} {address}: its certificate (CN={name}, serial {cert.serial_number:x}) is revoked on "
            f"the project CRL {crl_file}; refusing to connect")
    return cert


def wait_and_refuse_if_revoked(
    address: str, ca_file: Path, crl_file: Path, what: str, deadline_s: float | None = None,
    log: object = None, interval: float = 2.0, mark: Path | None = None, allow_expired: bool = False,
) -> x509.Certificate:
    """refuse_if_revoked, retried while the server is unreachable (it may start after this host).

    Waiting instead of starting unchecked: a SuperNode started before its check
    would later connect to whoever answers at the address.
    """
    start = time.monotonic()
    while True:
        try:
            return refuse_if_revoked(address, ca_file, crl_file, what, mark=mark, allow_expired=allow_expired)
        except ServerUnreachableError as exc:
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise
            if callable(log):
                log(f"waiting for the {what} to check its certificate against the CRL: {exc}")
            time.sleep(interval)
