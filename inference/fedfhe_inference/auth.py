"""Who is calling: the single CN of the verified mutual-TLS client certificate is the owner identity.

gRPC has already checked the chain to the project CA and the validity dates
during the handshake; the node's interceptor (limits.Guard) has also refused
any certificate of the wrong shape before the RPC ran (see identity.py). This
re-reads the owner from the certificate itself with the same shape checks, so
a servicer never trusts gRPC's C-string view of the CN.
"""

from __future__ import annotations

import grpc

from .identity import judge, peer_certificate


def owner_of(context: grpc.ServicerContext) -> str:
    return judge(peer_certificate(context.auth_context())).owner_or_raise()
