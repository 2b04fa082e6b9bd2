"""The loopback deployment behind `make demo` and the integration tests."""
