"""The Inference servicer: each RPC checks identity and limits, then touches bundles, keys or the FHE pool.

Every refusal is a ServiceError turned into one gRPC status with a message;
anything unexpected is logged here and answered INTERNAL, and the server keeps serving.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

from . import key_sharing
from .auth import owner_of
from .bundles import BundleRegistry, LoadedBundle
from .config import InferenceConfig
from .display import status_text
from .errors import ServiceError, exhausted, invalid
from .identity import Identity
from .keystore import KeyRecord, KeyStore, check_key_id
from .metrics import Metrics
from .runner import FheRunner, KeyFault, check_rows, circuit_spec

log = logging.getLogger("fedfhe.inference.rpc")


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Authenticate, run, map ServiceError to its status, log one line per call (never row data)."""

    @functools.wraps(fn)
    def wrapper(self: InferenceService, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        owner = "-"
        code = grpc.StatusCode.OK
        try:
            owner = owner_of(context)
            return fn(self, request, context, owner)
        except ServiceError as exc:
            code = exc.code
            context.abort(exc.code, status_text(exc.message))  # bounded and escaped: messages echo input
        except Exception:
            if not context.is_active():
                code = grpc.StatusCode.CANCELLED
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s from %s failed", fn.__name__, owner)
            context.abort(grpc.StatusCode.INTERNAL, "internal error on the inference node (see its log)")
        finally:
            log.info("%s owner=%s status=%s %.1f ms", fn.__name__, owner, code.name,
                     1000 * (time.perf_counter() - started))

    return wrapper


def model_info(bundle: LoadedBundle, latest: bool) -> pb.ModelInfo:
    s = bundle.schema
    meta = {k: v for k, v in bundle.meta.items() if k not in ("files", "kind")}
    return pb.ModelInfo(
        model_id=bundle.model_id,
        version=bundle.version,
        schema=pb.SchemaSummary(
            name=s.name, n_features=s.n_features, feature_min=s.feature_min, feature_max=s.feature_max,
            task=s.task, classes=list(s.label_codes),
        ),
        bundle_sha256=bundle.bundle_sha256,
        client_zip_sha256=bundle.client_zip_sha256,
        client_zip_bytes=len(bundle.client_zip),
        family=bundle.family,
        n_bits=bundle.n_bits,
        latest=latest,
        metadata_json=json.dumps(meta, sort_keys=True, default=str),
    )


class InferenceService(pb_grpc.InferenceServicer):
    def __init__(self, cfg: InferenceConfig, registry: BundleRegistry, keys: KeyStore, runner: FheRunner,
                 metrics: Metrics | None = None) -> None:
        self.cfg, self.registry, self.keys, self.runner = cfg, registry, keys, runner
        self.metrics = metrics or Metrics()  # a registry of its own: recording costs the same, served or not
        # In-process evaluation (sandbox: false): at most one evaluating batch per FHE worker holds its (possibly
        # large) keys in this process; others queue. Sandboxed, keys live in the workers' bounded caches and rows
        # wait at the runner's fair gate instead: a call-wide slot would let one owner's two long batches hold
        # every slot (another owner's one-row Predict went from 10.7 ms to 308 ms).
        self.evaluation_slots = threading.BoundedSemaphore(runner.workers) if runner.sandbox is None else None

    def _budget(self, context: grpc.ServicerContext, ceiling: float) -> float:
        remaining = context.time_remaining()
        return ceiling if remaining is None else max(0.0, min(ceiling, remaining))

    @_rpc
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext, owner: str) -> Any:
        served = self.registry.all(request.model_id)
        return pb.ListModelsResponse(models=[model_info(b, latest) for b, latest in served])

    @_rpc
    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext, owner: str) -> Any:
        bundle = self.registry.get(request.model.model_id, request.model.version)
        return model_info(bundle, self.registry.latest_version(bundle.model_id) == bundle.version)

    @_rpc
    def GetClientSpecs(self, request: pb.GetClientSpecsRequest, context: grpc.ServicerContext, owner: str) -> Any:
        bundle = self.registry.get(request.model.model_id, request.model.version)
        return pb.ClientSpecs(
            model_id=bundle.model_id, version=bundle.version, client_zip=bundle.client_zip,
            client_zip_sha256=bundle.client_zip_sha256, manifest=bundle.manifest,
            manifest_signature=bundle.signature,
        )

    @_rpc
    def UploadKeys(self, request_iterator: Iterator[pb.UploadKeysRequest], context: grpc.ServicerContext,
                   owner: str) -> Any:
        deadline = time.monotonic() + self._budget(context, self.cfg.deadlines.upload_s)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("UploadKeys must start with an UploadHeader (model, total_bytes, sha256)")
        header = first.header
        if not header.model.version:
            raise invalid("UploadHeader.model.version must name the version the keys were generated for")
        bundle = self.registry.get(header.model.model_id, header.model.version)
        most = circuit_spec(bundle).max_key_bytes  # the circuit sets the size, not a fixed cap
        if header.total_bytes > most:
            raise invalid(f"UploadHeader.total_bytes {header.total_bytes}: {bundle.model_id} version "
                          f"{bundle.version} takes at most {most} bytes of evaluation keys")
        receiving = time.perf_counter()
        with self.keys.upload(owner, bundle.model_id, bundle.version, header.total_bytes, header.sha256,
                              Identity.caller_serial(context), bundle.key_params_sha256) as up:
            for msg in request_iterator:
                if msg.WhichOneof("part") != "chunk":
                    raise invalid("UploadKeys: only one UploadHeader, at the start of the stream")
                if time.monotonic() > deadline:
                    raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "key upload took longer than allowed")
                up.write(msg.chunk)
            if not context.is_active():
                raise ServiceError(grpc.StatusCode.CANCELLED, "the client cancelled the upload")
            received = time.perf_counter()
            record = up.commit(lambda path, key_id: self.runner.validate_keys(bundle, path, key_id), deadline)
        self.metrics.uploaded.inc(record.size)
        log.info("owner=%s uploaded keys %s for %s/%s (%d bytes; received in %.3f s, checked and stored in %.3f s)",
                 owner, record.key_id, record.model_id, record.version, record.size, received - receiving,
                 time.perf_counter() - received)
        return pb.UploadKeysResponse(key_id=record.key_id, bytes_received=record.size, sha256=record.sha256)

    @_rpc
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext, owner: str) -> Any:
        budget = self._budget(context, self.cfg.deadlines.predict_s)
        record = self.keys.current(request.key_id, owner, self.registry_check(request.model.model_id, ""),
                                   time.monotonic() + budget)
        self.keys.touch(record)
        rows = list(request.ciphertexts)
        limits = self.cfg.limits
        if not rows:
            raise invalid("empty batch: send at least one ciphertext")
        if len(rows) > limits.max_batch_rows:
            raise exhausted(f"batch of {len(rows)} rows exceeds the limit of {limits.max_batch_rows}; split it")
        for i, ct in enumerate(rows):
            if len(ct) > limits.max_ciphertext_bytes:
                raise exhausted(f"row {i}: ciphertext of {len(ct)} bytes exceeds {limits.max_ciphertext_bytes}")
        bundle = self.registry.get(request.model.model_id, request.model.version)
        if not record.serves(bundle.model_id, bundle.version):
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"key {record.key_id} serves {record.model_id} version(s) {', '.join(record.versions)}, not "
                f"{bundle.model_id} version {bundle.version}: attach them to it (AttachKeys) if its circuit takes "
                "the same key set, or generate and upload keys for that version",
            )
        check_rows(circuit_spec(bundle), rows)  # exactly the circuit's input layout, before Concrete sees a byte
        queued = time.monotonic()
        if self.evaluation_slots is not None and not self.evaluation_slots.acquire(timeout=budget):
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the node stayed busy for {budget:.1f}s; retry later or allow a longer deadline")
        self.metrics.queue_wait.observe(time.monotonic() - queued)
        try:
            evaluator = self.runner.evaluator(bundle, record.key_id, self.keys.key_path(record),
                                              lambda: self.keys.evaluation_keys(record))
            label = f"{bundle.model_id} version {bundle.version}"
            remaining = max(0.0, budget - (time.monotonic() - queued))
            try:
                results, seconds = self.runner.run_batch(evaluator, rows, None, remaining, context.is_active, label,
                                                         owner)
            except KeyFault as exc:  # the stored keys crash or stall Concrete: never loaded again
                self.keys.quarantine(record.key_id, exc.message)
                self.runner.forget(record.key_id)
                raise
            del evaluator
        finally:
            if self.evaluation_slots is not None:
                self.evaluation_slots.release()
        self.metrics.rows.labels(bundle.model_id).inc(len(rows))
        self.metrics.evaluation.labels(bundle.model_id).observe(seconds)
        return pb.PredictResponse(results=results, server_seconds=seconds, model_version=bundle.version)

    def registry_check(self, model_id: str, version: str) -> Callable[[KeyRecord, Path, str], Any]:
        """How keys loaded from the key registry are checked here: as an upload (``FheRunner.validate_keys``),
        against the circuit of a version they serve that this node serves; for AttachKeys (``version``), against
        the version they are being attached to when this node serves none of theirs."""

        def check(record: KeyRecord, path: Path, key_id: str) -> Any:
            bundle = None
            for v in record.versions:
                try:
                    bundle = self.registry.get(record.model_id, v)
                    break
                except ServiceError:
                    continue
            if bundle is None and version and model_id == record.model_id:
                bundle = self.registry.get(model_id, version)
            if bundle is None:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"evaluation keys {record.key_id} serve {record.model_id} version(s) "
                                   f"{', '.join(record.versions)}, none of which this node serves")
            try:
                return self.runner.validate_keys(bundle, path, key_id)
            except ServiceError as exc:
                raise ServiceError(exc.code, f"evaluation keys {record.key_id} from the key registry fail the "
                                             f"check against {bundle.model_id} version {bundle.version}: "
                                             f"{exc.message}") from None

        return check

    def evict_keys(self, revoked: frozenset[int], idle_s: float) -> int:
        """Delete keys of revoked certificates and keys idle for ``idle_s`` (0: never), from disk and workers."""
        gone = self.keys.evict(revoked, idle_s)
        for record, why in gone:
            self.runner.forget(record.key_id)
            log.info("owner=%s: evicted keys %s (%s): %s", record.owner, record.key_id, record.model_id, why)
        return len(gone)

    @_rpc
    def DeleteKeys(self, request: pb.DeleteKeysRequest, context: grpc.ServicerContext, owner: str) -> Any:
        key_id = check_key_id(request.key_id)
        if request.HasField("model") and request.model.version:  # detach one version; the last takes the keys
            record, deleted = self.keys.detach(key_id, owner, request.model.model_id, request.model.version)
            if not deleted:
                log.info("owner=%s detached keys %s from %s/%s (still serving %s)", owner, key_id,
                         request.model.model_id, request.model.version, ",".join(record.versions))
                return pb.DeleteKeysResponse(key_id=key_id, bytes_freed=0, versions_left=list(record.versions))
        elif request.HasField("model"):
            raise invalid("DeleteKeysRequest.model.version must name the version to detach (or leave model unset)")
        else:
            record = self.keys.delete(key_id, owner)
        self.runner.forget(record.key_id)
        log.info("owner=%s deleted keys %s", owner, record.key_id)
        return pb.DeleteKeysResponse(key_id=record.key_id, bytes_freed=record.size)

    @_rpc
    def AttachKeys(self, request: pb.AttachKeysRequest, context: grpc.ServicerContext, owner: str) -> Any:
        deadline = time.monotonic() + self._budget(context, self.cfg.deadlines.upload_s)
        record = key_sharing.attach(self.keys, self.registry, self.runner.validate_keys, owner,
                                    Identity.caller_serial(context), request.key_id, request.model.model_id,
                                    request.model.version, request.key_params_sha256, deadline,
                                    self.registry_check(request.model.model_id, request.model.version))
        log.info("owner=%s attached keys %s to %s/%s (serving %s)", owner, record.key_id, record.model_id,
                 request.model.version, ",".join(record.versions))
        return pb.AttachKeysResponse(key_id=record.key_id, versions=list(record.versions))
