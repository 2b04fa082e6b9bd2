"""Model maths of the ServerApp, ClientApp and FHE command processes: families, scores, data."""
