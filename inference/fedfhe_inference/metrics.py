"""Prometheus metrics of the inference node (prometheus-client), served over HTTP on ``metrics_address``.

What an operator watches: calls and their latency per RPC and gRPC status (every method of every
service, counted by the Guard interceptor, refusals included), ciphertext rows evaluated, how long a
Predict waited for an FHE evaluation slot and how long the evaluation took, the key store's size,
the bundles served and refused, and FHE worker replacements. No label carries an owner's name or
any other value an owner chose: methods are the server's registered ones, models are published
bundles, so the number of series stays bounded whatever clients send.

The endpoint is plain HTTP without authentication (the Prometheus convention): keep it on localhost
(the default) or on a network only the scraper reaches; ``metrics_address: ""`` switches it off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fedfhe_common.pki.cert_metrics import CertificateExpiry
from fedfhe_common.runtime.errors import ConfigError

log = logging.getLogger("fedfhe.inference.metrics")
PREFIX = "fedfhe_inference"
# From a cached single-row Predict (a few ms) to a tree batch or a large key upload (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "-", name or method


class _State(Collector):
    """Values read at scrape time from the node's parts (key store, bundles, workers), not kept twice."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], Any]] = {}

    def collect(self) -> Any:
        def read(name: str, default: Any) -> Any:
            fn = self.sources.get(name)
            if fn is None:
                return default
            try:
                return fn()
            except Exception:  # noqa: BLE001 - a scrape must not fail because one source did
                log.exception("metrics source %s failed", name)
                return default

        stored = read("key_store", (0, 0, 0))
        yield GaugeMetricFamily(f"{PREFIX}_key_store_bytes", "Bytes of evaluation keys stored on disk",
                                value=stored[0])
        yield GaugeMetricFamily(f"{PREFIX}_key_sets", "Evaluation key sets stored", value=stored[1])
        yield GaugeMetricFamily(f"{PREFIX}_key_sets_quarantined",
                                "Stored key sets refused since they crashed or stalled an FHE worker",
                                value=stored[2])
        loaded, refused = read("bundles", (0, 0))
        yield GaugeMetricFamily(f"{PREFIX}_bundles_loaded", "Bundle versions being served", value=loaded)
        yield GaugeMetricFamily(f"{PREFIX}_bundles_refused",
                                "Bundle versions in bundles_dir that failed verification or loading", value=refused)
        served, refused_versions = read("bundle_versions", ([], []))
        for name, versions, text in (("bundle_served", served, "1 for each model version being served"),
                                     ("bundle_refused", refused_versions,
                                      "1 for each model version in bundles_dir refused (its reason is logged)")):
            g = GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["model_id", "version"])
            for model_id, version in versions:
                g.add_metric([model_id, version], 1)
            yield g
        workers, replaced = read("workers", (0, 0))
        yield GaugeMetricFamily(f"{PREFIX}_fhe_workers", "FHE worker processes (or threads with sandbox: false)",
                                value=workers)
        c = CounterMetricFamily(f"{PREFIX}_fhe_workers_replaced",
                                "FHE worker processes replaced after a crash, a CPU overrun or a timeout")
        c.add_metric([], replaced)
        yield c


class Metrics:
    """The node's metrics in a registry of its own (several nodes can live in one test process)."""

    def __init__(self, certfile: Path | None = None) -> None:
        disable_created_metrics()  # no *_created series: a timestamp per label set, twice the lines for nothing
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(f"{PREFIX}_rpcs", "RPCs finished, by service, method and gRPC status",
                             ["service", "method", "code"], registry=r)
        self.latency = Histogram(f"{PREFIX}_rpc_duration_seconds",
                                 "RPC duration from arrival to status, by service, method and gRPC status",
                                 ["service", "method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.rows = Counter(f"{PREFIX}_rows_evaluated", "Ciphertext rows evaluated (successful Predict calls)",
                            ["model"], registry=r)
        self.queue_wait = Histogram(f"{PREFIX}_queue_wait_seconds",
                                    "Time a Predict waited for a free FHE evaluation slot",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.evaluation = Histogram(f"{PREFIX}_evaluation_seconds",
                                    "Wall time of one Predict batch's FHE evaluation", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.uploaded = Counter(f"{PREFIX}_key_upload_bytes", "Evaluation key bytes accepted by UploadKeys",
                                registry=r)
        self.state = _State()
        r.register(self.state)
        if certfile is not None:
            r.register(CertificateExpiry(PREFIX, {"server": certfile}))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def enable_key_registry(self) -> None:
        """The shared key registry's counters (only on nodes that use one: others' metrics stay as they were)."""
        r = self.registry
        self.registry_counters = {
            "hit": Counter(f"{PREFIX}_key_registry_hits",
                           "Predict/AttachKeys calls whose keys the registry has and this node holds a copy of",
                           registry=r),
            "miss": Counter(f"{PREFIX}_key_registry_misses",
                            "Predict/AttachKeys calls for keys the registry has and this node had no copy of",
                            registry=r),
            "load": Counter(f"{PREFIX}_key_registry_loads",
                            "Key sets fetched from the registry, checked against the circuit and kept here",
                            registry=r),
        }

    def registry_event(self, event: str) -> None:
        counter = getattr(self, "registry_counters", {}).get(event)
        if counter is not None:
            counter.inc()

    # ---- recording ------------------------------------------------------------------------------
    def observe_call(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        service, name = split_method(method)
        status = code.name if code is not None else "UNKNOWN"
        self.calls.labels(service, name, status).inc()
        self.latency.labels(service, name, status).observe(seconds)

    def source(self, name: str, fn: Callable[[], Any]) -> None:
        """Read ``fn`` at each scrape: ``key_store`` -> (bytes, sets, quarantined), ``bundles`` -> (loaded,
        refused), ``workers`` -> (count, replaced)."""
        self.state.sources[name] = fn

    # ---- serving --------------------------------------------------------------------------------
    def serve(self, address: str) -> int:
        """Start the HTTP endpoint on ``address`` (host:port); the bound port. ConfigError if it cannot bind."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            self._server, self._thread = start_http_server(int(port), host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics_address {address}: cannot bind: {exc.strerror or exc} "
                              "(choose a free port, or \"\" to switch metrics off)") from None
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
