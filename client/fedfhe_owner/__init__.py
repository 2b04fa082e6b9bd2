"""fedfhe data-owner host: SuperNode, ClientApp, encrypted-inference client."""
