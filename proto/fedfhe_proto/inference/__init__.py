"""fedfhe.inference: the encrypted-inference service's protobuf packages."""
