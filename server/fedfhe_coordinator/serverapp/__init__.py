"""The Flower ServerApp process (the SuperLink starts it): rounds, artifact."""
