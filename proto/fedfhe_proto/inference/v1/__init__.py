"""fedfhe.inference.v1: generated stubs for the inference node process (regenerate: fedfhe_proto.generate)."""
