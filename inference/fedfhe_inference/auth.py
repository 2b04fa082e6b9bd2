"""Who is calling: the CN of the verified mutual-TLS client certificate is the owner identity.

gRPC has already checked the chain to the project CA and the validity dates
during the handshake; here we also insist on the clientAuth usage, so a
server certificate from the same CA cannot act as an owner.
"""

from __future__ import annotations

import functools

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import ServiceError, denied


@functools.lru_cache(maxsize=1024)
def _client_auth_allowed(pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def owner_of(context: grpc.ServicerContext) -> str:
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    pems = auth.get("x509_pem_cert") or []
    if not names or not pems:
        raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "a client certificate from the project CA is required")
    if not _client_auth_allowed(pems[0]):
        raise denied("the client certificate is not issued for client authentication (clientAuth)")
    owner = names[0].decode("utf-8", errors="replace")
    if not owner:
        raise denied("the client certificate has an empty common name")
    return owner
