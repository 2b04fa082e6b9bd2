"""The coordinator's FHE command processes: compile, choose-n-bits, tune, train-local."""
