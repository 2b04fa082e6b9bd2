"""AttachKeys: an owner's stored evaluation keys serve one more version of their model, nothing uploaded.

A retrained model with unchanged hyper-parameters takes the same key set (``fedfhe_common.contracts.key_params``);
a tree's keys are 60-78 MB, so each new version would otherwise cost every owner an upload. Everything
in the request is hostile input: the key id must be the caller's own (else NOT_FOUND or
PERMISSION_DENIED, as for Predict), the version must be served and of the same model, the key set it
was checked against must have the new circuit's fingerprint (INVALID_ARGUMENT naming the parameters
that differ), and the stored bytes then pass the very checks an upload passes (the circuit's key
layout, then Concrete's parse, in a worker when sandboxed) before the new version is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from fedfhe_common.contracts import key_params

from .bundles import BundleRegistry, LoadedBundle
from .errors import ServiceError, invalid
from .fair import SlotTimeout
from .keystore import KeyRecord, KeyStore, check_key_id


def _uploaded_key_set(registry: BundleRegistry, record: KeyRecord) -> tuple[str, dict[str, Any] | None]:
    """(fingerprint, keyset) of what the keys were checked against; keyset None when that version is gone."""
    try:
        original: LoadedBundle | None = registry.get(record.model_id, record.version)
    except ServiceError:
        original = None
    if record.key_params_sha256:
        keyset = original.key_set if original is not None else None
        return record.key_params_sha256, keyset
    if original is None:  # uploaded before fingerprints were kept, and its version is no longer served
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"evaluation keys {record.key_id} were uploaded before this node recorded key parameters, "
                           f"and {record.model_id} version {record.version} is no longer served to compare them: "
                           "upload keys for the new version")
    return original.key_params_sha256, original.key_set


def check_fit(registry: BundleRegistry, record: KeyRecord, bundle: LoadedBundle, claimed: str) -> None:
    """INVALID_ARGUMENT unless the key set the record was checked against is the one ``bundle`` needs."""
    where = f"{bundle.model_id} version {bundle.version}"
    if claimed and claimed != bundle.key_params_sha256:
        raise invalid(f"{where} needs key parameters {bundle.key_params_sha256[:16]}..., not {claimed[:16]}... as "
                      "the request says: its signed manifest records the former")
    fingerprint, keyset = _uploaded_key_set(registry, record)
    if fingerprint != bundle.key_params_sha256:
        what = (key_params.differences(keyset, bundle.key_set) if keyset is not None
                else f"version {record.version} is no longer served to name the parameters")
        raise invalid(f"evaluation keys {record.key_id} fit the key set of {record.model_id} version "
                      f"{record.version} ({fingerprint[:16]}...), {where} needs another "
                      f"({bundle.key_params_sha256[:16]}...): {what}; generate and upload keys for {bundle.version}")


def attach(store: KeyStore, registry: BundleRegistry, validate: Callable[[LoadedBundle, Path, str], Any],
           owner: str, serial: str, key_id: str, model_id: str, version: str, claimed: str,
           deadline: float, load: Callable[[KeyRecord, Path, str], Any] | None = None) -> KeyRecord:
    """Check, then record that ``key_id`` serves ``model_id`` ``version`` too; returns the updated record.

    ``validate(bundle, path, key_id)`` is the upload's check (``FheRunner.validate_keys``); it runs with
    an empty key id, so a worker checks the stored bytes afresh instead of trusting its cached parse.
    ``deadline`` (time.monotonic) bounds the wait for a turn at the key-check gate. ``load``: how keys
    fetched from the shared key registry are checked (``KeyStore.current``; unused without a registry).
    """
    check_key_id(key_id)
    if not version:
        raise invalid("AttachKeysRequest.model.version must name the version to use the keys for")
    if claimed and not key_params.recorded({key_params.FIELD: claimed}):
        raise invalid("AttachKeysRequest.key_params_sha256 must be 64 lowercase hex digits or empty")
    record = store.current(key_id, owner, load, deadline)
    bundle = registry.get(model_id, version)
    if bundle.model_id != record.model_id:
        raise invalid(f"evaluation keys {key_id} belong to model {record.model_id}, not {bundle.model_id}: keys "
                      "are shared between versions of one model only")
    if record.serves(bundle.model_id, bundle.version):
        return record
    check_fit(registry, record, bundle, claimed)
    wait = max(0.0, deadline - time.monotonic())
    try:
        with store.validation_gate.slot(owner, wait):
            validate(bundle, store.key_path(record), "")
    except SlotTimeout:
        raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the keys could not be checked within the call's deadline ({wait:.1f} s): other owners' "
                           "keys are being checked; try again") from None
    except ServiceError as exc:
        raise ServiceError(exc.code, f"evaluation keys {key_id} do not fit {bundle.model_id} version "
                                     f"{bundle.version}: {exc.message}") from None
    return store.attach(key_id, owner, bundle.model_id, bundle.version, serial)
