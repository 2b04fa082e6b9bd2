"""ServiceError: a refusal that becomes one gRPC status code with a message for the caller."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Raised anywhere below the servicer; the servicer aborts the RPC with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def exhausted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def denied(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message)


class RegistryError(Exception):
    """The key registry (key_registry.py) could not be reached or used; the message is for the log and the caller.

    Here, not in key_registry.py: keystore raises it too, and key_registry imports keystore.
    """
