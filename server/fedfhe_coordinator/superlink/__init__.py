"""The `fedfhe-coordinator superlink` process: flower-superlink, Prometheus metrics."""
