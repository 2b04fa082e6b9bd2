"""fedfhe.inference.v1: generated stubs (regenerate with ``python -m fedfhe_proto.generate``)."""
