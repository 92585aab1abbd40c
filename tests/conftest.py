"""Shared fixtures: the local control plane, the loopback OCI registry and the hub stand-in, each a plugin
of its own."""

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.registry", "tests.fixtures.hub"]


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "own_cluster: starts and stops a cluster of its own (make test runs these in a second session)",
    )
