"""The owner's ClientApp processes: flwr-clientapp door, launcher, server, the app."""
