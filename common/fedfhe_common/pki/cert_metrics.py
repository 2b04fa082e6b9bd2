"""A service's own TLS certificate end date as a Prometheus gauge, read from its file at each scrape.

Certificates last 90 days (``fedfhe-pki``): an alert on this gauge (say, under 14 days left) tells
the operator to renew before owners are refused. Read at scrape time, a renewed certificate shows
at once, before the service restarts to use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509


class CertificateExpiry:
    """A collector for a prometheus-client registry (it needs only ``collect``)."""

    def __init__(self, prefix: str, certfiles: dict[str, Path]) -> None:
        self.name = f"{prefix}_certificate_expiry_timestamp_seconds"
        self.certfiles = dict(certfiles)

    def collect(self) -> Iterator[Any]:
        # lazy: prometheus-client only where metrics are served (the services' dependency, common's metrics extra)
        from prometheus_client.core import GaugeMetricFamily  # lazy: see above

        g = GaugeMetricFamily(self.name, "When this service's TLS certificate ends (Unix time; NaN if unreadable)",
                              labels=["certificate"])
        for label, path in sorted(self.certfiles.items()):
            try:
                cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
                g.add_metric([label], cert.not_valid_after_utc.timestamp())
            except (OSError, ValueError):
                g.add_metric([label], float("nan"))
        yield g
