from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRef(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class SchemaSummary(_message.Message):
    __slots__ = ("name", "n_features", "feature_min", "feature_max", "task", "classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MIN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAX_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    n_features: int
    feature_min: float
    feature_max: float
    task: str
    classes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., n_features: _Optional[int] = ..., feature_min: _Optional[float] = ..., feature_max: _Optional[float] = ..., task: _Optional[str] = ..., classes: _Optional[_Iterable[int]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "version", "schema", "bundle_sha256", "client_zip_sha256", "client_zip_bytes", "family", "n_bits", "latest", "metadata_json")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ZIP_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ZIP_BYTES_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    N_BITS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    schema: SchemaSummary
    bundle_sha256: str
    client_zip_sha256: str
    client_zip_bytes: int
    family: str
    n_bits: int
    latest: bool
    metadata_json: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., schema: _Optional[_Union[SchemaSummary, _Mapping]] = ..., bundle_sha256: _Optional[str] = ..., client_zip_sha256: _Optional[str] = ..., client_zip_bytes: _Optional[int] = ..., family: _Optional[str] = ..., n_bits: _Optional[int] = ..., latest: bool = ..., metadata_json: _Optional[str] = ...) -> None: ...

class GetClientSpecsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ClientSpecs(_message.Message):
    __slots__ = ("model_id", "version", "client_zip", "client_zip_sha256", "manifest", "manifest_signature")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ZIP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ZIP_SHA256_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    client_zip: bytes
    client_zip_sha256: str
    manifest: bytes
    manifest_signature: bytes
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., client_zip: _Optional[bytes] = ..., client_zip_sha256: _Optional[str] = ..., manifest: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("model", "total_bytes", "sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    total_bytes: int
    sha256: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadKeysRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadKeysResponse(_message.Message):
    __slots__ = ("key_id", "bytes_received", "sha256")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    bytes_received: int
    sha256: str
    def __init__(self, key_id: _Optional[str] = ..., bytes_received: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("key_id", "model", "ciphertexts")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    model: ModelRef
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, key_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("results", "server_seconds", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SERVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[bytes]
    server_seconds: float
    model_version: str
    def __init__(self, results: _Optional[_Iterable[bytes]] = ..., server_seconds: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class DeleteKeysRequest(_message.Message):
    __slots__ = ("key_id", "model")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    model: ModelRef
    def __init__(self, key_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class DeleteKeysResponse(_message.Message):
    __slots__ = ("key_id", "bytes_freed", "versions_left")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_LEFT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    bytes_freed: int
    versions_left: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., bytes_freed: _Optional[int] = ..., versions_left: _Optional[_Iterable[str]] = ...) -> None: ...

class AttachKeysRequest(_message.Message):
    __slots__ = ("key_id", "model", "key_params_sha256")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KEY_PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    model: ModelRef
    key_params_sha256: str
    def __init__(self, key_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., key_params_sha256: _Optional[str] = ...) -> None: ...

class AttachKeysResponse(_message.Message):
    __slots__ = ("key_id", "versions")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...
