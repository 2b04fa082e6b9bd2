"""fedfhe coordinator host: SuperLink, ServerApp, FHE compilation."""
