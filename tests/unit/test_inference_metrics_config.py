"""The inference node's metrics registry, its config key and JSON log lines, in process (no node started)."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedfhe_common.runtime.config import from_dict
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.logs import JsonLines
from fedfhe_inference.config import InferenceConfig
from fedfhe_inference.metrics import Metrics

BASE = {"listen": "127.0.0.1:50051", "certfile": "a.crt", "keyfile": "a.key", "ca_certfile": "ca.crt",
        "bundles_dir": "b", "keys_dir": "k", "release_public_key": "r.pub"}


def test_metrics_address_is_localhost_by_default_can_be_off_and_is_checked():
    assert from_dict(InferenceConfig, BASE).metrics_address == "127.0.0.1:9464"
    assert from_dict(InferenceConfig, {**BASE, "metrics_address": ""}).metrics_address == ""
    for bad in ("9464", "localhost:0", "host:port", False):
        with pytest.raises(ConfigError, match="metrics_address"):
            from_dict(InferenceConfig, {**BASE, "metrics_address": bad})


def _samples(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_served_registry_reads_sources_at_scrape_time_and_survives_a_failing_one():
    m = Metrics()
    stored = [(100, 1, 0)]
    m.source("key_store", lambda: stored[0])
    m.source("bundles", lambda: 1 / 0)  # a broken source: logged, reported as 0, the scrape still answers
    m.observe_call("/fedfhe.inference.v1.Inference/Predict", grpc.StatusCode.OK, 0.02)
    m.observe_call("/fedfhe.inference.v1.Inference/Predict", None, 0.5)
    port = m.serve("127.0.0.1:0")
    try:
        first = _samples(port)
        stored[0] = (300, 2, 1)
        second = _samples(port)
    finally:
        m.stop()
    predict = '{"code": "%s", "method": "Predict", "service": "fedfhe.inference.v1.Inference"}'
    assert first["fedfhe_inference_rpcs_total" + predict % "OK"] == 1
    assert first["fedfhe_inference_rpcs_total" + predict % "UNKNOWN"] == 1
    assert first["fedfhe_inference_rpc_duration_seconds_bucket" + predict.replace(
        '"method"', '"le": "0.025", "method"') % "OK"] == 1
    assert first["fedfhe_inference_key_store_bytes{}"] == 100 and second["fedfhe_inference_key_store_bytes{}"] == 300
    assert second["fedfhe_inference_key_sets_quarantined{}"] == 1
    assert first["fedfhe_inference_bundles_loaded{}"] == 0


def test_a_taken_metrics_port_is_a_config_error_naming_the_key():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics_address 127.0.0.1:{port}: cannot bind"):
            Metrics().serve(f"127.0.0.1:{port}")


def test_json_log_lines_are_one_object_per_record():
    fmt = JsonLines()
    try:
        raise ValueError("boom")
    except ValueError:
        exc = sys.exc_info()
    record = logging.LogRecord("fedfhe.inference.rpc", logging.ERROR, __file__, 1, "owner=%s\nforged line",
                               ("mallory",), exc)
    line = fmt.format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["logger"] == "fedfhe.inference.rpc"
    assert out["message"] == "owner=mallory\nforged line" and "ValueError: boom" in out["exception"]
    assert out["time"].endswith("Z")


def test_the_certificate_end_date_is_read_at_each_scrape(tmp_path):
    """Issue 26: certificates last 90 days; the gauge shows a renewed one at once, NaN for an unreadable file."""
    import math

    from prometheus_client import CollectorRegistry, generate_latest

    from fedfhe_common.pki.ca import init_ca, issue
    from fedfhe_common.pki.cert_metrics import CertificateExpiry

    init_ca(tmp_path)
    issue(tmp_path, "inference", server_hosts=["127.0.0.1"], days=10)
    registry = CollectorRegistry()
    registry.register(CertificateExpiry("fedfhe_inference", {"server": tmp_path / "inference.crt"}))

    def value() -> float:
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith('fedfhe_inference_certificate_expiry_timestamp_seconds{certificate="server"}'):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no gauge")

    first = value()
    assert 9 * 86400 < first - time.time() < 11 * 86400
    issue(tmp_path, "inference", server_hosts=["127.0.0.1"], days=90, force=True)  # renewed
    assert 89 * 86400 < value() - time.time() < 91 * 86400
    (tmp_path / "inference.crt").unlink()
    assert math.isnan(value())
