"""fedfhe.inference: protobuf packages of the inference node process's service, which predict processes call."""
