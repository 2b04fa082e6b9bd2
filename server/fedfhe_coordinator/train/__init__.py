"""The `fedfhe-coordinator train` process: drives `flwr run`, follows the run, reports."""
