"""Shared fixtures: the local control plane and the loopback OCI registry, each a plugin of its own."""

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.registry"]


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "own_cluster: starts and stops a cluster of its own (make test runs these in a second session)",
    )
