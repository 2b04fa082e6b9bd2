"""No stalls on the inference node (issue 10): silent streams, header-only uploads, silent unary calls, key byte caps.

- As many silent UploadKeys streams as the node has RPC threads (one owner,
  no client deadline) leave another owner's Predict served while they are
  open: the owner's streams beyond ``limits.max_streams_per_owner`` are refused
  at once, the others are closed by the node after ``limits.message_idle_s``.
  Before, they held every RPC thread for ever. Predict latency with and
  without the silent streams is recorded (``record_property``), not judged.
- A header-only upload and a unary call opened without its message are
  closed after the idle timeout too, leaving no temp file.
- Stored key bytes are capped per owner and node-wide: RESOURCE_EXHAUSTED
  naming the limit, nothing stored is changed, the stored keys keep working.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import inference_support as support
import numpy as np
import pytest
from inference_support import lr_fixture, module_pki_fixture  # noqa: F401 - the lr and module_pki fixtures

from fedfhe_common.runtime.procs import wait_until
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(420)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
RPC_THREADS = 16
IDLE_S = 20.0
MAX_STREAMS = 2


def silent(release: threading.Event, *first: Any) -> Iterator[Any]:
    """Send ``first`` (if any), then nothing until ``release``."""
    yield from first
    release.wait(300)


def _predict(stub: Any, request: pb.PredictRequest) -> tuple[Any, float]:
    started = time.perf_counter()
    resp = stub.Predict(request, timeout=60)
    return resp, time.perf_counter() - started


def test_silent_streams_leave_other_owners_served(tmp_path_factory, lr, module_pki, record_property):
    work = tmp_path_factory.mktemp("stalls")
    node = support.start_node(work / "node", module_pki, (lr.directory,), rpc_threads=RPC_THREADS,
                              limits={**support.LIMITS, "message_idle_s": IDLE_S,
                                      "max_streams_per_owner": MAX_STREAMS})
    release = threading.Event()
    try:
        caller = support.make_owner(node, "owner-1", work / "owner-1-state", lr.X_test)
        request = pb.PredictRequest(key_id=caller.key_id, model=MODEL, ciphertexts=caller.encrypt(lr.X_test[:2]))
        stub = node.stub(caller.name)
        quiet = statistics.median(_predict(stub, request)[1] for _ in range(3))

        hostile = node.stub("owner-0")
        streams = [hostile.UploadKeys.future(silent(release)) for _ in range(RPC_THREADS)]  # no client deadline
        keys = caller.evaluation_keys()
        header_only = node.stub("owner-2").UploadKeys.future(
            silent(release, pb.UploadKeysRequest(header=support.upload_header(keys))))
        with node.channel("owner-3") as ch:
            opened_predict = ch.stream_unary("/fedfhe.inference.v1.Inference/Predict",
                                             request_serializer=pb.PredictRequest.SerializeToString,
                                             response_deserializer=pb.PredictResponse.FromString)
            silent_unary = opened_predict.future(silent(release))
            # the owner's streams beyond its limit are refused at once (before any message is read)
            wait_until(lambda: sum(f.done() for f in streams) >= RPC_THREADS - MAX_STREAMS, 60,
                       "the node to refuse owner-0's streams beyond its limit")
            wait_until(lambda: len(list(node.keys_dir.glob(".upload-*.part"))) == 1, 60,
                       "the header-only upload to reach the node")
            opened_at = time.monotonic()

            resp, busy = _predict(stub, request)  # another owner, while the silent streams hold their slots
            still_open = [f for f in streams if not f.done()]
            record_property("predict_s_quiet", round(quiet, 4))
            record_property("predict_s_with_silent_streams", round(busy, 4))
            print(f"Predict (2 rows): {quiet * 1000:.1f} ms quiet, {busy * 1000:.1f} ms with {RPC_THREADS} silent "
                  f"streams open ({len(still_open)} admitted, idle timeout {IDLE_S:g}s)")
            np.testing.assert_allclose(caller.decrypt(resp.results),
                                       lr.model.predict_proba(lr.X_test[:2], fhe="simulate"), atol=1e-9)
            assert len(still_open) == MAX_STREAMS and not header_only.done() and not silent_unary.done(), (
                "the silent streams must still be open while Predict is served")

            # ... and the node closes every silent one itself, with a clear status, after the idle timeout
            for f in [*streams, header_only, silent_unary]:
                f.exception(IDLE_S + 60)
            closed_after = time.monotonic() - opened_at
        for f in streams:
            err = f.exception()
            assert err is not None
            if f in still_open:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
                assert "no message from the client" in err.details() and "limits.message_idle_s" in err.details()
            else:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                assert "limits.max_streams_per_owner" in err.details()
        for f in (header_only, silent_unary):
            assert f.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED, f.exception().details()
            assert "no message from the client" in f.exception().details()
        assert closed_after < IDLE_S + 60
        wait_until(lambda: not list(node.keys_dir.glob(".upload-*.part")), 30, "the header-only upload's temp file "
                   "to be removed")
        release.set()
        # every slot is free again: the hostile owner can use the node normally, and so can everyone else
        assert [m.model_id for m in hostile.ListModels(pb.ListModelsRequest(), timeout=30).models] == ["digits-lr"]
        assert len(_predict(stub, request)[0].results) == 2
        assert node.proc is not None and node.proc.poll() is None
    finally:
        release.set()
        node.stop()


def _upload(node: Any, owner: str, keys: bytes) -> str:
    parts = [pb.UploadKeysRequest(header=support.upload_header(keys)), pb.UploadKeysRequest(chunk=keys)]
    return node.stub(owner).UploadKeys(iter(parts), timeout=60).key_id


def test_stored_key_bytes_are_capped_per_owner_and_node_wide(tmp_path_factory, lr, module_pki):
    work = tmp_path_factory.mktemp("key-caps")
    node = support.start_node(work / "node", module_pki, (lr.directory,))
    try:
        first = support.make_owner(node, "owner-0", work / "owner-0-state", lr.X_test)
        keys = first.evaluation_keys()
        size = len(keys)
        node.stop()
        # restart with caps: owner-0's stored keys count against them from the start
        support.write_node_config(node.work, module_pki, node.port, limits={
            **support.LIMITS, "max_owner_key_bytes": size * 3 // 2, "max_stored_key_bytes": size * 7 // 2})
        node.start()

        with pytest.raises(grpc.RpcError) as info:
            _upload(node, "owner-0", keys)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_owner_key_bytes" in info.value.details()
        kept = {"owner-1": _upload(node, "owner-1", keys), "owner-2": _upload(node, "owner-2", keys)}
        before = support.stored_keys(node.keys_dir)
        with pytest.raises(grpc.RpcError) as info:
            _upload(node, "owner-3", keys)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_stored_key_bytes" in info.value.details()
        assert support.stored_keys(node.keys_dir) == before  # nothing stored is lost or changed

        resp = node.stub("owner-0").Predict(
            pb.PredictRequest(key_id=first.key_id, model=MODEL, ciphertexts=first.encrypt(lr.X_test[:1])), timeout=60)
        np.testing.assert_allclose(first.decrypt(resp.results), lr.model.predict_proba(lr.X_test[:1], fhe="simulate"),
                                   atol=1e-9)
        node.stub("owner-1").DeleteKeys(pb.DeleteKeysRequest(key_id=kept["owner-1"]), timeout=30)
        assert _upload(node, "owner-3", keys)  # room again
    finally:
        node.stop()
