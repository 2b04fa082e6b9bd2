"""Encrypted prediction, end to end, on the owner's host.

Fetch the model's public client specs, generate (or reuse) this owner's keys,
upload the evaluation keys once per model version, encrypt each row, send
batches, decrypt. The inference node sees ciphertexts only; the private key
and the clear rows and predictions never leave this process.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedfhe_common.contracts import key_params
from fedfhe_common.contracts.bundle import CLIENT_ZIP, preprocessing_of, version_key
from fedfhe_common.contracts.fhe_wire import CircuitSpec, WireError
from fedfhe_common.contracts.schema import DatasetSchema
from fedfhe_common.ml.scoring import mean_abs_error
from fedfhe_common.pki.release import load_verify_key
from fedfhe_common.runtime.errors import ConfigError, FedfheError, IntegrityError
from fedfhe_owner.config import InferenceEndpoint
from fedfhe_owner.predict import key_reuse
from fedfhe_owner.predict.decode import Decrypted, decides_on_raw_scores, decode, decrypt
from fedfhe_owner.predict.inference_client import InferenceClient, InferenceError
from fedfhe_owner.predict.keys import ModelKeys, newest_seen_version
from fedfhe_proto.inference.v1 import inference_pb2 as pb


@dataclass
class PredictResult:
    """Predictions plus what the demo report needs: latency and bytes on the wire."""

    model_id: str
    version: str
    bundle_sha256: str
    key_id: str
    keys_uploaded: bool
    predictions: np.ndarray
    scores: np.ndarray  # decrypted, de-quantized, post-processed outputs (rows x outputs)
    probabilities: bool  # whether ``scores`` are class probabilities
    classes: list[int]
    bytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    keys_reused_from: str = ""  # version whose keyset this one took (same key parameters): no keygen
    keys_attached_from: str = ""  # version whose upload the node attached to this one: no upload

    @property
    def rows(self) -> int:
        return len(self.predictions)

    @property
    def latency_per_row_s(self) -> float:
        """Encrypt + round trip + decrypt per row (one-off keygen and upload excluded)."""
        s = self.seconds
        return (s.get("encrypt", 0) + s.get("rpc", 0) + s.get("decrypt", 0)) / max(1, self.rows)

    @property
    def metric(self) -> str:
        """What ``score`` measures: accuracy for a classifier (it has classes), R² for a regressor."""
        return "accuracy" if self.classes else "r2"

    def score(self, y: np.ndarray) -> float:
        if not self.classes:
            from sklearn.metrics import r2_score  # lazy: scikit-learn takes ~2 s to import

            return float(r2_score(np.asarray(y, dtype=np.float64), np.asarray(self.predictions, dtype=np.float64)))
        return float(np.mean(self.predictions == np.asarray(y)))

    def metrics(self, y: np.ndarray) -> dict[str, float]:
        """Scores against labels: accuracy for a classifier; R² and mean absolute error (the target's unit) for a
        regressor, since R² alone says nothing of how far off a prediction is."""
        if self.classes:
            return {"accuracy": self.score(y)}

        return {"r2": self.score(y), "mae": mean_abs_error(np.asarray(self.predictions, dtype=np.float64),
                                                           np.asarray(y, dtype=np.float64))}

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "version": self.version, "bundle_sha256": self.bundle_sha256,
            "key_id": self.key_id, "keys_uploaded": self.keys_uploaded, "keys_reused_from": self.keys_reused_from,
            "keys_attached_from": self.keys_attached_from, "rows": self.rows,
            "latency_per_row_s": self.latency_per_row_s, "bytes": dict(self.bytes), "seconds": dict(self.seconds),
        }


def signed_schema(endpoint: InferenceEndpoint, state_dir: Path, client: InferenceClient,
                  info: pb.ModelInfo) -> DatasetSchema:
    """The model's schema from its signed manifest (fetched and verified once), never from the node's word."""
    if endpoint.release_public_key is None:
        raise ConfigError("owner.yaml: release_public_key (release.pub) is required to verify the client specs")
    release_key = load_verify_key(endpoint.release_public_key)
    keys = ModelKeys(state_dir, info.model_id, info.version)
    _install_specs(client, info, keys, release_key)
    return DatasetSchema.from_mapping(keys.verified_specs(release_key)["schema"], "signed manifest: schema")


def check_own_schema(own: DatasetSchema, signed: DatasetSchema, model: str) -> None:
    """An owner that names its schema predicts only with a model of exactly that schema (typed columns encode rows)."""
    if own.to_dict() != signed.to_dict():
        differ = sorted(k for k, v in own.to_dict().items() if signed.to_dict().get(k) != v)
        raise FedfheError(f"model {model} was trained on schema {signed.name!r}, which differs from this owner's "
                          f"schema {own.name!r} in {', '.join(differ)}; align owner.yaml's schema with the model's")


def resolve_for_predict(client: InferenceClient, state_dir: Path, model_id: str = "",
                        version: str = "") -> pb.ModelInfo:
    """``resolve_model``, refusing a "latest" older than the newest version this owner has seen (anti-rollback).

    A node could otherwise serve any older signed version, e.g. one whose model a later release
    fixed. An owner that names ``version`` explicitly gets that version: pinning is its choice.
    """
    info = resolve_model(client, model_id, version)
    if not version:
        newest = newest_seen_version(state_dir, info.model_id)
        if newest is not None and version_key(info.version) < version_key(newest):
            raise IntegrityError(
                f"inference node {client.endpoint.address} offers version {info.version} as the latest of model "
                f"{info.model_id}, but this owner has already used version {newest}: a node may be rolling the model "
                f"back; refusing (name --model-version {info.version}, or version={info.version!r} in Python, "
                "to use it deliberately)")
    return info


def resolve_model(client: InferenceClient, model_id: str = "", version: str = "") -> pb.ModelInfo:
    """The named model (latest version unless one is given), or the only model the node serves."""
    if model_id:
        return client.model_info(model_id, version)
    ids = sorted({m.model_id for m in client.list_models()})
    if len(ids) == 1:
        return client.model_info(ids[0], version)
    if not ids:
        raise FedfheError(f"inference node {client.endpoint.address} serves no model yet")
    raise FedfheError(f"inference node {client.endpoint.address} serves several models ({', '.join(ids)}): "
                      "choose one with --model (or inference.model_id)")


def _progress(enabled: bool) -> Any:
    from rich.console import Console  # lazy: rich only for the commands that draw tables
    from rich.progress import (  # lazy: rich only for the commands that draw tables
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
        transient=False,
    )


def _result_spec(fhe: Any) -> CircuitSpec:
    """The circuit's output layout from the client specs this owner verified (never from the node)."""
    try:
        return CircuitSpec.from_client_zip((Path(fhe.path_dir) / CLIENT_ZIP).read_bytes())
    except (OSError, WireError) as exc:
        raise FedfheError(f"client specs in {fhe.path_dir}: {exc}") from None


def _check_result(spec: CircuitSpec, data: bytes, i: int, address: str) -> None:
    """A hostile node's bytes must not reach Concrete's parser: exactly the circuit's output or refused."""
    try:
        spec.check_output(data, f"result {i}")
    except WireError as exc:
        raise FedfheError(f"inference node {address} sent a malformed encrypted result, refused: {exc}") from None


class _Session:
    """One owner, one model version, one node: keys uploaded at most once (again only if the node lost them).

    ``shared``: (key id, version) of these very evaluation keys already on the node for another version
    whose circuit takes the same key set (``key_reuse``); the node is asked to attach them first, and
    refusing (an older node, keys it lost or judges unfit) only means uploading them as before.
    """

    def __init__(self, client: InferenceClient, info: pb.ModelInfo, keys: ModelKeys, fhe: Any, progress: Any,
                 siblings: key_reuse.Siblings | None = None) -> None:
        self.client, self.info, self.keys, self.fhe, self.progress = client, info, keys, fhe, progress
        self.fingerprint = (siblings.fingerprint if siblings is not None else None) or ""
        self.lock = threading.Lock()
        self.evaluation_keys = fhe.get_serialized_evaluation_keys()
        self.sha256 = hashlib.sha256(self.evaluation_keys).hexdigest()
        self.key_id = keys.key_id(client.endpoint.address, self.sha256)
        self.shared = None
        if self.key_id is None and siblings is not None:
            self.shared = key_reuse.shared_key_id(siblings, client.endpoint.address, self.sha256)
        self.uploaded = False
        self.attached_from = ""
        self.uploaded_bytes = 0
        self.upload_seconds = 0.0

    def _attach(self) -> bool:
        """Ask the node to use the keys it holds for another version; False: upload them instead."""
        assert self.shared is not None
        key_id, version = self.shared
        self.shared = None  # one try
        try:
            self.client.attach_keys(key_id, self.info, self.fingerprint)
        except InferenceError as exc:
            if exc.code not in _ATTACH_FALLBACK:
                raise
            return False
        self.key_id, self.attached_from = key_id, version
        self.keys.remember_key_id(self.client.endpoint.address, key_id, self.sha256, attached_from=version)
        return True

    def ensure_uploaded(self, stale: str | None = None) -> str:
        with self.lock:
            if self.key_id is None and self.shared is not None and self._attach():
                return self.key_id  # type: ignore[return-value]
            if self.key_id is None or self.key_id == stale:
                started = time.perf_counter()
                task = self.progress.add_task("upload keys", total=len(self.evaluation_keys),
                                              extra=f"{len(self.evaluation_keys) / 1e6:.1f} MB")
                resp = self.client.upload_keys(self.info, self.evaluation_keys,
                                               on_chunk=lambda n: self.progress.advance(task, n), sha256=self.sha256)
                self.key_id = resp.key_id
                self.keys.remember_key_id(self.client.endpoint.address, resp.key_id, self.sha256)
                self.uploaded = True
                self.uploaded_bytes += len(self.evaluation_keys)
                self.upload_seconds += time.perf_counter() - started
            return self.key_id

    def call(self, ciphertexts: list[bytes]) -> tuple[pb.PredictResponse, float]:
        key_id = self.ensure_uploaded()
        started = time.perf_counter()
        try:
            resp = self.client.predict(key_id, self.info, ciphertexts)
        except InferenceError as exc:
            # The node may have lost or deleted our keys (e.g. a wiped keys_dir), or they no longer serve this
            # version (detached elsewhere): upload again, once.
            lost = exc.code == grpc.StatusCode.NOT_FOUND and "evaluation keys" in exc.details
            detached = exc.code == grpc.StatusCode.FAILED_PRECONDITION and "(AttachKeys)" in exc.details
            if not (lost or detached):
                raise
            key_id = self.ensure_uploaded(stale=key_id)
            started = time.perf_counter()
            resp = self.client.predict(key_id, self.info, ciphertexts)
        return resp, time.perf_counter() - started


# AttachKeys refusals that leave uploading as before: a node without the RPC, keys it no longer has or no
# longer lets this certificate use, keys it judges unfit for the version (its upload check then has the word).
_ATTACH_FALLBACK = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND,
                              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.FAILED_PRECONDITION})


def _install_specs(conn: InferenceClient, info: pb.ModelInfo, keys: ModelKeys, release_key: Any) -> int:
    """Fetch and verify signed client specs unless this version's are pinned already; bytes fetched.

    A node that announces another manifest for a pinned version is refused without a fetch.
    """
    where = f"inference node {conn.endpoint.address}, model {info.model_id} version {info.version}"
    pinned = keys.pinned_manifest_sha256()
    if pinned is not None:
        if info.bundle_sha256 != pinned:
            raise IntegrityError(f"{where}: now announces bundle sha256 {info.bundle_sha256[:16]}..., but this "
                                 f"version was pinned at {pinned[:16]}... on first use; refusing it")
        return 0
    specs = conn.client_specs(info)
    keys.install_client_specs(specs.client_zip, specs.manifest, specs.manifest_signature, release_key, where)
    return len(specs.client_zip)


@contextmanager
def _client(endpoint: InferenceEndpoint, client: InferenceClient | None) -> Iterator[InferenceClient]:
    if client is not None:
        yield client
        return
    own = InferenceClient(endpoint)
    try:
        yield own
    finally:
        own.close()


def predict_rows(
    endpoint: InferenceEndpoint,
    state_dir: Path,
    X: np.ndarray,
    *,
    model_id: str = "",
    version: str = "",
    batch_size: int | None = None,
    progress: bool = True,
    client: InferenceClient | None = None,
) -> PredictResult:
    """Encrypted predictions for the rows of ``X`` (rows x features, in the model's schema).

    The client specs must carry the release key's signature (``endpoint.release_public_key``)
    and pass the content and security checks before Concrete ML sees them. The next batch
    is encrypted while the node evaluates the previous one.
    """
    started = time.perf_counter()
    if endpoint.release_public_key is None:
        raise ConfigError("owner.yaml: release_public_key (release.pub) is required to verify the client specs")
    release_key = load_verify_key(endpoint.release_public_key)
    batch = batch_size or endpoint.batch_size
    if batch < 1:
        raise FedfheError(f"batch size must be >= 1, got {batch}")
    seconds = {k: 0.0 for k in ("specs", "keygen", "upload", "encrypt", "rpc", "server", "decrypt")}
    sizes = {"client_specs": 0, "evaluation_keys": 0, "uploaded_keys": 0, "ciphertexts": 0, "results": 0}
    with _client(endpoint, client) as conn:
        info = resolve_for_predict(conn, state_dir, model_id or endpoint.model_id, version)
        keys = ModelKeys(state_dir, info.model_id, info.version)
        t = time.perf_counter()
        sizes["client_specs"] = _install_specs(conn, info, keys, release_key)
        meta = keys.verified_specs(release_key)
        schema = DatasetSchema.from_mapping(meta["schema"], "signed manifest: schema")  # not the node's word
        prep = preprocessing_of(meta)  # checked against the schema when the manifest was verified
        seconds["specs"] = time.perf_counter() - t
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != schema.n_features or len(X) == 0:
            raise FedfheError(f"model {info.model_id} {info.version} needs rows of {schema.n_features} features, "
                              f"got an array of shape {X.shape}")
        X = prep.transform(X, f"rows for {info.model_id} {info.version}")  # exactly the model's training transform
        # key_params_sha256 (None in a manifest of before: no reuse): another version's keys fit if it is equal
        siblings = key_reuse.Siblings(state_dir, info.model_id, info.version, key_params.recorded(meta), release_key)
        reused_from = key_reuse.adopt_keyset(keys, siblings)  # same key set: no key generation
        fhe, seconds["keygen"] = keys.fhe_client()
        bar = _progress(progress)
        decrypted: list[Decrypted] = []
        with bar, cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-rpc") as pool:
            session = _Session(conn, info, keys, fhe, bar, siblings)
            spec = _result_spec(fhe)
            sizes["evaluation_keys"] = len(session.evaluation_keys)
            task = bar.add_task(f"encrypted predict {info.model_id} {info.version}", total=len(X), extra="rows")

            def collect(fut: cf.Future) -> None:
                resp, rpc_s = fut.result()
                seconds["rpc"] += rpc_s
                seconds["server"] += resp.server_seconds
                t = time.perf_counter()
                for i, r in enumerate(resp.results):
                    sizes["results"] += len(r)
                    _check_result(spec, r, i, conn.endpoint.address)
                    decrypted.append(decrypt(fhe, r))
                seconds["decrypt"] += time.perf_counter() - t
                bar.advance(task, len(resp.results))

            pending: cf.Future | None = None
            for start in range(0, len(X), batch):
                t = time.perf_counter()
                cts = [fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(start, min(start + batch, len(X)))]
                seconds["encrypt"] += time.perf_counter() - t
                sizes["ciphertexts"] += sum(len(c) for c in cts)
                if pending is not None:
                    collect(pending)
                pending = pool.submit(session.call, cts)
            if pending is not None:
                collect(pending)
        seconds["upload"] = session.upload_seconds
        sizes["uploaded_keys"] = session.uploaded_bytes
    scores = np.vstack([d.outputs for d in decrypted])
    raw = np.vstack([d.raw for d in decrypted])
    predictions, probabilities = decode(raw, scores, schema, decides_on_raw_scores(fhe.model))
    seconds["total"] = time.perf_counter() - started
    return PredictResult(
        model_id=info.model_id, version=info.version, bundle_sha256=info.bundle_sha256, key_id=session.key_id or "",
        keys_uploaded=session.uploaded, keys_reused_from=reused_from or "", keys_attached_from=session.attached_from,
        predictions=predictions, scores=scores, probabilities=probabilities,
        classes=list(schema.classes), bytes=sizes, seconds=seconds,
    )


@dataclass(frozen=True)
class DeletedKeys:
    """What delete-keys did on the node: the key id, and the versions the key set still serves (none: deleted)."""

    key_id: str
    versions_left: tuple[str, ...] = ()


def delete_keys(endpoint: InferenceEndpoint, state_dir: Path, model_id: str, version: str,
                client: InferenceClient | None = None) -> DeletedKeys | None:
    """Ask the node to forget this owner's evaluation keys for one model version (None: none recorded).

    A key set shared with other versions (AttachKeys) is only detached from this one; the node deletes
    it with the last version it serves. Once it is gone (or a node of before key sharing deleted it
    whole), the other versions here forget its id too, and their next predict uploads again.
    """
    keys = ModelKeys(state_dir, model_id, version)
    key_id = keys.forget_key_id(endpoint.address)
    if not key_id:
        return None
    left: tuple[str, ...] = ()
    with _client(endpoint, client) as conn:
        try:
            left = tuple(conn.delete_keys(key_id, model_id, version).versions_left)
        except InferenceError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
    if not left:
        key_reuse.forget_everywhere(state_dir, model_id, endpoint.address, key_id)
    return DeletedKeys(key_id, left)
