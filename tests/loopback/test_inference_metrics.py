"""Observability of the inference node (issue 15): Prometheus metrics scraped over HTTP, JSON log lines.

The session's node (``node``) serves its metrics on a free loopback port (the harness's config); the
test scrapes /metrics before and after a Predict and a refused call and checks what moved, by exactly
how much. A second node runs with ``--log-format json`` and ``metrics_address: ""``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
import yaml
from inference_support import Node, write_node_config
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.runtime.procs import free_port, venv_bin, wait_until
from fedfhe_owner.predict.inference_client import InferenceClient
from fedfhe_proto.inference.v1 import inference_pb2 as pb
from fedfhe_testbed.inference_node import spawn

INFERENCE = "fedfhe.inference.v1.Inference"
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # the text format's start


def metrics_url(node: Node) -> str:
    address = yaml.safe_load(node.config.read_text())["metrics_address"]
    return f"http://{address}/metrics"


def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(metrics_url(node), timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def rpc(method: str, code: str) -> tuple[tuple[str, str], ...]:
    return (("code", code), ("method", method), ("service", INFERENCE))


def refused_versions(node: Node, served: list) -> list[Path]:
    """Version directories the node scans but does not serve (other modules leave tampered ones on purpose)."""
    names = {(m.model_id, m.version) for m in served}
    return [d for m in node.bundles_dir.iterdir() if m.is_dir() and not m.name.startswith(".")
            for d in m.iterdir() if d.is_dir() and not d.name.startswith(".") and (m.name, d.name) not in names]


def test_bundles_refused_follows_the_bundles_dir(node):
    """A refused version counts while its directory is there, and stops counting once it is removed."""
    def refused_gauge() -> float:
        return scrape(node)[("fedfhe_inference_bundles_refused", ())]

    served = node.stub("alice").ListModels(pb.ListModelsRequest(), timeout=20).models
    base = len(refused_versions(node, served))
    junk = node.bundles_dir / "digits-junk" / "1"
    junk.mkdir(parents=True)
    (junk / "manifest.json").write_text("{not a manifest")
    try:
        node.signal(signal.SIGHUP)
        wait_until(lambda: refused_gauge() == base + 1, 30, "the junk version to count as refused", interval=0.2)
    finally:
        shutil.rmtree(junk.parent)
    node.signal(signal.SIGHUP)
    wait_until(lambda: refused_gauge() == base, 30, "the removed version to stop counting", interval=0.2)


def test_metrics_count_predictions_refusals_and_state(node, alice, digits):
    before = scrape(node)
    with InferenceClient(alice.endpoint) as client:
        info = client.model_info("digits-lr", "1")
        resp = client.predict(alice.key_ids["1"], info, alice.encrypt(digits.X_test[:3], "1"))
    assert len(resp.results) == 3
    stub = node.stub("alice")
    with pytest.raises(grpc.RpcError) as refused:  # a malformed key id: refused before any evaluation
        stub.Predict(pb.PredictRequest(key_id="../not-a-key", model=pb.ModelRef(model_id="digits-lr", version="1"),
                                       ciphertexts=[b"x"]), timeout=20)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(node)

    def moved(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert moved("fedfhe_inference_rpcs_total", rpc("Predict", "OK")) == 1
    assert moved("fedfhe_inference_rpcs_total", rpc("Predict", "INVALID_ARGUMENT")) == 1
    assert moved("fedfhe_inference_rpc_duration_seconds_count", rpc("Predict", "OK")) == 1
    assert moved("fedfhe_inference_rpc_duration_seconds_sum", rpc("Predict", "OK")) > 0
    assert moved("fedfhe_inference_rpc_duration_seconds_count", rpc("Predict", "INVALID_ARGUMENT")) == 1
    assert moved("fedfhe_inference_rpcs_total", rpc("GetModelInfo", "OK")) == 1
    assert moved("fedfhe_inference_rows_evaluated_total", (("model", "digits-lr"),)) == 3
    assert moved("fedfhe_inference_queue_wait_seconds_count") == 1  # the refused call never queued
    assert moved("fedfhe_inference_evaluation_seconds_count", (("model", "digits-lr"),)) == 1
    # the node's state, read at scrape time: the key files on its disk, the bundles it serves (other tests of
    # the session may have published more than the fixture's two)
    key_files = list(node.keys_dir.glob("*.evk"))
    assert after[("fedfhe_inference_key_sets", ())] == len(key_files) >= 2
    assert after[("fedfhe_inference_key_store_bytes", ())] == sum(p.stat().st_size for p in key_files)
    served = stub.ListModels(pb.ListModelsRequest(), timeout=20).models
    assert after[("fedfhe_inference_bundles_loaded", ())] == len(served) >= 2
    assert after[("fedfhe_inference_bundles_refused", ())] == len(refused_versions(node, served))
    assert after[("fedfhe_inference_fhe_workers", ())] >= 1
    # no label carries an owner's name or what a caller sent
    assert not [k for k in after if any("alice" in v or "not-a-key" in v for _, v in k[1])]


class JsonLogNode(Node):
    """The harness's node started with ``--log-format json``."""

    def launch(self):  # type: ignore[no-untyped-def]
        self.proc = spawn([venv_bin("fedfhe-inference"), "serve", "--config", str(self.config),
                           "--log-format", "json"], self.log)
        self.starts += 1
        return self.proc


def test_json_log_lines_and_metrics_switched_off(tmp_path, pki, lr_bundles):
    from fedfhe_common.pki.release import load_verify_key
    from fedfhe_inference.bundles import publish_bundle

    port = free_port()
    n = JsonLogNode(tmp_path, pki, port, write_node_config(tmp_path, pki, port, metrics_address=""))
    publish_bundle(lr_bundles["1"].directory, n.bundles_dir, load_verify_key(pki / "release.pub"))
    try:
        n.start()
        with InferenceClient(n.endpoint("alice")) as client:
            client.model_info("digits-lr", "1")
        listening = {c.laddr.port for c in psutil.Process(n.pid).net_connections("inet") if c.status == "LISTEN"}
        assert listening == {port}  # the gRPC port only: no metrics endpoint
    finally:
        n.stop()
    lines = n.log_text().splitlines()
    # every log record is a JSON object; what libraries print themselves (torch's CUDA notice) is not a record
    assert not [line for line in lines if TEXT_RECORD.match(line)]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any("listening on" in m for m in messages)
    assert any(m.startswith("GetModelInfo owner=alice status=OK") for m in messages)
    assert not any("Prometheus metrics on" in m for m in messages)
