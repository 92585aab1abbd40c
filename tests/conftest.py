"""Shared fixtures: the local control plane and the loopback OCI registry, each a plugin of its own."""

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.registry"]
