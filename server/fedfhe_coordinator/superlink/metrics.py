"""Training progress as Prometheus metrics (prometheus-client), served by ``fedfhe-coordinator superlink``.

The ServerApp that knows each round lives only as long as its run (Flower starts a fresh
``flwr-serverapp`` per run), so the long-running ``superlink`` wrapper serves what the runs leave
behind, read at each scrape: ``progress.jsonl`` (one line per finished round, under
``training.output_dir``, rewritten by each run) and ``runs.jsonl`` (how each ``train`` ended, under
``release_dir``, else ``state_dir``). Nothing is kept twice and the numbers survive a restart of the wrapper.

The endpoint is plain HTTP without authentication (the Prometheus convention): keep it on localhost
(the default, ``metrics_address`` in coordinator.yaml) or on a scrape-only network; ``""`` switches it off.
No label carries an owner's name: the number of series stays fixed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedfhe_common.pki.cert_metrics import CertificateExpiry
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator import runs
from fedfhe_coordinator.config import CoordinatorConfig

log = logging.getLogger("fedfhe.coordinator.metrics")
PREFIX = "fedfhe_coordinator"
# runs.jsonl's last event of a run -> the state shown; "idle": no run recorded yet.
STATES = {"submitted": "running", "completed": "completed", "failed": "failed", "interrupted": "interrupted"}
RUN_STATES = ("idle", "running", "completed", "failed", "interrupted")
OUTCOMES = ("completed", "failed", "interrupted")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """progress.jsonl's rounds; a line being written (or torn) ends the list."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _owners(items: Any) -> int:
    """Distinct owners in a progress row's ``failures`` or ``missing`` list (one owner may fail fit and evaluate)."""
    return len({str(i.get("owner", "?")) if isinstance(i, dict) else str(i) for i in items or []})


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class TrainingCollector(Collector):
    """The latest run's state and rounds, and how many runs ended which way, read at scrape time."""

    def __init__(self, progress: Path, state_dir: Path) -> None:
        self.progress = progress
        self.state_dir = state_dir

    def collect(self) -> Iterator[Metric]:
        records = list(runs.records(self.state_dir).values())  # in the order runs were first recorded
        latest = records[-1] if records else {}
        state = STATES.get(str(latest.get("event", "")), "idle") if latest else "idle"
        g = GaugeMetricFamily(f"{PREFIX}_run_state", "The latest federated run's state (1 for the current one)",
                              labels=["state"])
        for s in RUN_STATES:
            g.add_metric([s], 1.0 if s == state else 0.0)
        yield g
        ended = CounterMetricFamily(f"{PREFIX}_runs", "Federated runs that ended, by outcome (runs.jsonl)",
                                    labels=["outcome"])
        for outcome in OUTCOMES:
            ended.add_metric([outcome], sum(1 for r in records if r.get("event") == outcome))
        yield ended
        asked = _number(latest.get("rounds")) or 0.0
        yield GaugeMetricFamily(f"{PREFIX}_run_rounds", "Rounds the latest run asked for", value=asked)
        rows = read_rows(self.progress) if latest or self.progress.exists() else []
        yield GaugeMetricFamily(f"{PREFIX}_rounds_completed", "Rounds the latest run has finished (progress.jsonl)",
                                value=len(rows))
        last = rows[-1] if rows else {}
        owners = GaugeMetricFamily(f"{PREFIX}_last_round_owners",
                                   "Owners in the latest finished round, by outcome: answered (a valid reply to "
                                   "fit), failed (an error or a refused reply), missing (no reply)",
                                   labels=["outcome"])
        owners.add_metric(["answered"], _number(last.get("fit_nodes")) or 0.0)
        owners.add_metric(["failed"], _owners(last.get("failures")))
        owners.add_metric(["missing"], _owners(last.get("missing")))
        yield owners
        yield GaugeMetricFamily(f"{PREFIX}_last_round_seconds", "Wall time of the latest finished round",
                                value=_number(last.get("seconds")) or 0.0)
        acc = GaugeMetricFamily(f"{PREFIX}_last_round_accuracy",
                                "Accuracy of the latest finished round's model, on the public test set "
                                "(public_test) or averaged over the owners' held-out rows (owners)",
                                labels=["scored_on"])
        for label, section in (("public_test", "server"), ("owners", "clients")):
            value = _number((last.get(section) or {}).get("accuracy"))
            if value is not None:
                acc.add_metric([label], value)
        yield acc


class Metrics:
    """The coordinator's registry (its own, so tests can hold several) and its HTTP endpoint."""

    def __init__(self, cfg: CoordinatorConfig) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(TrainingCollector(cfg.training.output_dir / "progress.jsonl", cfg.release_home))
        self.registry.register(CertificateExpiry(PREFIX, {"superlink": cfg.superlink.certfile}))
        self._server: Any = None

    def serve(self, address: str) -> int:
        """Start the HTTP endpoint on ``address`` (host:port); the bound port. ConfigError if it cannot bind."""
        host, _, port = address.rpartition(":")
        try:
            self._server, _thread = start_http_server(int(port), host.strip("[]"), registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics_address {address}: cannot bind: {exc.strerror or exc} "
                              "(choose a free port, or \"\" to switch metrics off)") from None
        log.info("training metrics on http://%s/metrics", address)
        return int(self._server.server_port)
