"""fedfhe inference node: serves FHE bundles over mutual-TLS gRPC."""
