"""Load on the inference node: 8 data owners at once, and calls beyond its capacity.

- 8 owners (8 client certificates, 8 key sets) send encrypted rows of the
  digits LR bundle concurrently: no error, every result decrypts to what the
  compiled model gives in simulation, and the node's RSS does not grow with the
  number of requests once warmed up. The test sends 50 rows per owner in
  batches of 5 to stay short on 2 cores; bench/load.py runs 8 x 200 and times it.
- With limits.max_concurrent_rpcs = 3 and three uploads held open, further
  calls are refused at once with RESOURCE_EXHAUSTED (never left to hit their
  deadline); once the uploads finish, the same calls succeed.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import grpc
import inference_support as support
import numpy as np
import psutil
import pytest
from inference_support import lr_fixture, module_pki_fixture  # noqa: F401 - the lr and module_pki fixtures

from fedfhe_common.runtime.procs import wait_until
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(420)
MODEL = pb.ModelRef(model_id=support.MODEL_ID, version=support.VERSION)
ROWS_PER_OWNER = 50
BATCH = 5
RSS_GROWTH_LIMIT = 50 << 20


def _served(stub) -> bool:
    """True once a cheap call is answered; False while the node still refuses for capacity."""
    try:
        stub.ListModels(pb.ListModelsRequest(), timeout=30)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    return True


def _rows(lr, i: int) -> np.ndarray:
    """Owner i's rows: its own slice of the held-out digits (wrapping round)."""
    idx = (np.arange(ROWS_PER_OWNER) + i * ROWS_PER_OWNER) % len(lr.X_test)
    return lr.X_test[idx]


def test_eight_owners_at_once(tmp_path_factory, lr, module_pki):
    work = tmp_path_factory.mktemp("load")
    node = support.start_node(work / "node", module_pki, (lr.directory,))
    try:
        owners = [support.make_owner(node, name, work / f"{name}-state", lr.X_test) for name in support.OWNERS]
        batches = []  # per owner: its ciphertext batches, encrypted up front
        for i, owner in enumerate(owners):
            cts = owner.encrypt(_rows(lr, i))
            batches.append([cts[s:s + BATCH] for s in range(0, len(cts), BATCH)])
        stubs = [node.stub(o.name) for o in owners]
        server = psutil.Process(node.proc.pid)
        results: list[list[bytes]] = [[] for _ in owners]
        errors: list[str] = []
        rss: list[int] = []

        def send(i: int, which: slice) -> None:
            for batch in batches[i][which]:
                try:
                    resp = stubs[i].Predict(pb.PredictRequest(key_id=owners[i].key_id, model=MODEL,
                                                              ciphertexts=batch), timeout=300)
                    results[i] += list(resp.results)
                except grpc.RpcError as exc:
                    errors.append(f"{owners[i].name}: {exc.code().name}: {exc.details()}")
                rss.append(server.memory_info().rss)

        def all_owners(which: slice) -> None:
            with cf.ThreadPoolExecutor(len(owners)) as pool:
                list(pool.map(lambda i: send(i, which), range(len(owners))))

        all_owners(slice(0, 2))  # warm-up: every owner's keys loaded, every RPC thread started
        warm = server.memory_info().rss
        rss.clear()
        all_owners(slice(2, None))
        end = server.memory_info().rss

        assert errors == []
        for i, owner in enumerate(owners):
            X = _rows(lr, i)
            scores = owner.decrypt(results[i])
            np.testing.assert_allclose(scores, lr.model.predict_proba(X, fhe="simulate"), atol=1e-9)
            np.testing.assert_array_equal(np.argmax(scores, axis=1), lr.model.predict(X, fhe="simulate"))
        assert end - warm < RSS_GROWTH_LIMIT, (
            f"RSS grew {(end - warm) >> 20} MiB after warm-up ({warm >> 20} -> {end >> 20} MiB, "
            f"peak {max(rss) >> 20} MiB over {len(rss)} requests)")
    finally:
        node.stop()


def test_calls_beyond_capacity_are_refused_at_once(tmp_path_factory, lr, module_pki):
    work = tmp_path_factory.mktemp("capacity")
    limit = 3
    # message_idle_s: the held uploads wait between header and chunk longer than the default idle timeout may allow
    node = support.start_node(work / "node", module_pki, (lr.directory,),
                              limits={**support.LIMITS, "max_concurrent_rpcs": limit, "message_idle_s": 300})
    release = threading.Event()
    try:
        holders = [support.make_owner(node, f"owner-{i}", work / f"owner-{i}-state", lr.X_test) for i in range(limit)]
        caller = support.make_owner(node, "owner-7", work / "owner-7-state", lr.X_test)

        def held_upload(owner: support.Owner) -> str:
            keys = owner.evaluation_keys()

            def parts():
                yield pb.UploadKeysRequest(header=support.upload_header(keys))
                release.wait(120)
                yield pb.UploadKeysRequest(chunk=keys)

            return node.stub(owner.name).UploadKeys(parts(), timeout=180).key_id

        pool = cf.ThreadPoolExecutor(limit)
        uploads = [pool.submit(held_upload, owner) for owner in holders]
        # every slot is taken once the node has opened a temp file for each held upload
        wait_until(lambda: len(list(node.keys_dir.glob(".upload-*.part"))) == limit, 60,
                   "the held uploads to reach the node")
        stub = node.stub(caller.name)
        request = pb.PredictRequest(key_id=caller.key_id, model=MODEL, ciphertexts=caller.encrypt(lr.X_test[:2]))
        for call, req in [(stub.Predict, request)] * 4 + [(stub.ListModels, pb.ListModelsRequest())]:
            with pytest.raises(grpc.RpcError) as info:
                call(req, timeout=120)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            assert info.value.details()
            assert not release.is_set() and not any(u.done() for u in uploads)  # refused while all slots were held
        release.set()
        key_ids = [u.result(120) for u in uploads]
        pool.shutdown()
        # grpc frees a server slot after the client has its reply, so the slots come back a moment later
        wait_until(lambda: _served(stub), 30, "the node to free the upload slots")
        resp = stub.Predict(request, timeout=120)  # capacity is back
        np.testing.assert_allclose(caller.decrypt(resp.results), lr.model.predict_proba(lr.X_test[:2], fhe="simulate"),
                                   atol=1e-9)
        for owner, key_id in zip(holders, key_ids, strict=True):
            node.stub(owner.name).DeleteKeys(pb.DeleteKeysRequest(key_id=key_id), timeout=30)
    finally:
        release.set()
        node.stop()
