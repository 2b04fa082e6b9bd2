"""Model maths of the ServerApp, the ClientApp and the FHE commands: families, scores, data."""
