"""Generated gRPC stubs of the fedfhe inference service."""
