"""A thin mutual-TLS gRPC client of the inference service; every failure becomes an InferenceError.

Knows nothing about FHE: it moves public client specs, evaluation keys,
ciphertexts and encrypted results. Keys and encryption live in keys.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_owner.config import InferenceEndpoint
from fedfhe_owner.server_certificate import ServerUnreachableError, refuse_if_revoked
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc


class InferenceError(FedfheError):
    """A refused or failed RPC; ``code`` is the gRPC status (e.g. NOT_FOUND, PERMISSION_DENIED)."""

    def __init__(self, address: str, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"inference node {address}: {method}: {code.name}: {details}")
        self.code = code
        self.details = details


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"inference.{what} {path}: cannot read: {exc.strerror}") from None


# gRPC's own retries (bounded attempts, exponential backoff) for a call the node refused UNAVAILABLE: a node
# restarting or gone costs the owner a retry, on another node with several (round_robin), not an error. Every
# RPC may be repeated: Predict and the reads change nothing, a repeated upload or delete is refused by name.
# A streamed key upload is retried only while its first 256 kB are buffered (grpc.per_rpc_retry_buffer_size).
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "5s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def service_config(balanced: bool) -> str:
    """The channel's gRPC service config: the retry policy, and round_robin over several nodes."""
    config: dict[str, object] = {"methodConfig": [{"name": [{"service": "fedfhe.inference.v1.Inference"}],
                                                   "retryPolicy": RETRY_POLICY}]}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


def channel_target(endpoint: InferenceEndpoint, addresses: list[str]) -> str:
    """One address as it is; several as gRPC's static resolver target (``ipv4:a:1,b:2``, IPv6 ``ipv6:``)."""
    if not endpoint.more_addresses:
        return addresses[0]
    scheme = "ipv6" if addresses[0].startswith("[") else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


def checked_addresses(endpoint: InferenceEndpoint) -> list[str]:
    """The nodes whose certificate the project CRL does not revoke (all, without a CRL); RevokedError for a
    revoked one. With several nodes one that cannot be reached now is left out of this channel: it could not
    be checked, so it is never used unchecked (the next channel checks it again)."""
    if endpoint.crl_file is None:
        return endpoint.addresses
    out, unreachable = [], []
    for address in endpoint.addresses:
        try:
            refuse_if_revoked(address, endpoint.ca_certfile, endpoint.crl_file, "inference node",
                              client_cert=endpoint.certfile, client_key=endpoint.keyfile,
                              mark=endpoint.crl_mark, allow_expired=endpoint.allow_expired_crl)
        except ServerUnreachableError as exc:
            unreachable.append((address, str(exc)))
            continue
        out.append(address)
    if not out:
        address, why = unreachable[0]
        raise InferenceError(address, "connect", grpc.StatusCode.UNAVAILABLE, why)
    return out


def secure_channel(endpoint: InferenceEndpoint) -> grpc.Channel:
    """TLS with this owner's client certificate; the server is checked against the project CA (and CRL)."""
    addresses = checked_addresses(endpoint)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(endpoint.ca_certfile, "ca_certfile"),
        private_key=_read(endpoint.keyfile, "keyfile"),
        certificate_chain=_read(endpoint.certfile, "certfile"),
    )
    options = [
        ("grpc.max_receive_message_length", endpoint.max_message_bytes),
        ("grpc.max_send_message_length", endpoint.max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(bool(endpoint.more_addresses))),
    ]
    if endpoint.server_name:
        options.append(("grpc.ssl_target_name_override", endpoint.server_name))
    return grpc.secure_channel(channel_target(endpoint, addresses), creds, options=options)


class InferenceClient:
    def __init__(self, endpoint: InferenceEndpoint, channel: grpc.Channel | None = None) -> None:
        self.endpoint = endpoint
        self.channel = channel or secure_channel(endpoint)
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.info_timeout = 60.0

    def _call(self, method: str, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise InferenceError(self.endpoint.address, method, code, details or "") from None

    def list_models(self, model_id: str = "") -> list[pb.ModelInfo]:
        resp = self._call("ListModels", self.stub.ListModels, pb.ListModelsRequest(model_id=model_id),
                          timeout=self.info_timeout)
        return list(resp.models)  # type: ignore[attr-defined]

    def model_info(self, model_id: str, version: str = "") -> pb.ModelInfo:
        req = pb.GetModelInfoRequest(model=pb.ModelRef(model_id=model_id, version=version))
        return self._call("GetModelInfo", self.stub.GetModelInfo, req, timeout=self.info_timeout)  # type: ignore[return-value]

    def client_specs(self, info: pb.ModelInfo) -> pb.ClientSpecs:
        """client.zip of exactly that version with its signed manifest (the caller verifies the signature)."""
        req = pb.GetClientSpecsRequest(model=pb.ModelRef(model_id=info.model_id, version=info.version))
        specs = self._call("GetClientSpecs", self.stub.GetClientSpecs, req, timeout=self.info_timeout)
        data = specs.client_zip  # type: ignore[attr-defined]
        if hashlib.sha256(data).hexdigest() != info.client_zip_sha256:
            raise FedfheError(f"inference node {self.endpoint.address}: client specs of {info.model_id} "
                              f"{info.version} do not match the announced SHA-256; refusing them")
        return specs  # type: ignore[return-value]

    def upload_keys(
        self, info: pb.ModelInfo, evaluation_keys: bytes, on_chunk: Callable[[int], None] | None = None,
        timeout: float | None = None, sha256: str | None = None,
    ) -> pb.UploadKeysResponse:
        """Stream the evaluation keys in chunks (a tree model's keys are ~77 MB, far above one message).

        ``sha256``: their hex digest if the caller has it already (the owner's session computes it to look up
        a stored key id); hashing 77 MB again costs ~45 ms before the first byte can leave.
        """
        chunk = self.endpoint.chunk_bytes
        view = memoryview(evaluation_keys)
        digest = sha256 or hashlib.sha256(evaluation_keys).hexdigest()

        def requests() -> Iterator[pb.UploadKeysRequest]:
            yield pb.UploadKeysRequest(header=pb.UploadHeader(
                model=pb.ModelRef(model_id=info.model_id, version=info.version),
                total_bytes=len(evaluation_keys), sha256=digest,
            ))
            for start in range(0, len(view), chunk):
                part = bytes(view[start:start + chunk])
                yield pb.UploadKeysRequest(chunk=part)
                if on_chunk:
                    on_chunk(len(part))

        return self._call("UploadKeys", self.stub.UploadKeys, requests(),  # type: ignore[return-value]
                          timeout=timeout or self.endpoint.upload_timeout_s)

    def predict(self, key_id: str, info: pb.ModelInfo, ciphertexts: list[bytes],
                timeout: float | None = None) -> pb.PredictResponse:
        req = pb.PredictRequest(key_id=key_id, model=pb.ModelRef(model_id=info.model_id, version=info.version),
                                ciphertexts=ciphertexts)
        return self._call("Predict", self.stub.Predict, req,  # type: ignore[return-value]
                          timeout=timeout or self.endpoint.timeout_s)

    def delete_keys(self, key_id: str, model_id: str = "", version: str = "") -> pb.DeleteKeysResponse:
        """Forget ``key_id``; with a version, detach only that one (the node deletes the keys with the last)."""
        req = pb.DeleteKeysRequest(key_id=key_id)
        if version:
            req.model.CopyFrom(pb.ModelRef(model_id=model_id, version=version))
        return self._call("DeleteKeys", self.stub.DeleteKeys, req, timeout=self.info_timeout)  # type: ignore[return-value]

    def attach_keys(self, key_id: str, info: pb.ModelInfo, key_params_sha256: str = "",
                    timeout: float | None = None) -> pb.AttachKeysResponse:
        """Have the node use keys uploaded for another version for ``info``'s version too (same key set)."""
        req = pb.AttachKeysRequest(key_id=key_id, model=pb.ModelRef(model_id=info.model_id, version=info.version),
                                   key_params_sha256=key_params_sha256)
        return self._call("AttachKeys", self.stub.AttachKeys, req,  # type: ignore[return-value]
                          timeout=timeout or self.endpoint.upload_timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
