"""Shared fixtures: the local control plane, the loopback OCI registry, the hub stand-in and the MLflow
tracking server, each a plugin of its own; and the markers every test gets from what it uses.

- ``cluster``: needs the local control plane (an API server, and for most the real node).
- ``unit``: no server at all (no control plane, registry or hub) and not ``slow``: ``make test-unit``.
- ``slow``: trains a model or builds binaries (marked by hand; still runs in CI).
"""

import pytest

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.registry",
    "tests.fixtures.hub",
    "tests.fixtures.mlflow",
]

# Fixtures that start a server process for the test (the cluster's are found through control_plane).
SERVER_FIXTURES = frozenset(
    {
        "control_plane",
        "oci_registry",
        "open_registry",
        "token_registry",
        "tls_registry",
        "hub_server",
        "mlflow_server",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "own_cluster: starts and stops a cluster of its own (make test runs these in a second session)",
    )
    config.addinivalue_line("markers", "cluster: needs the local control plane (set from its fixtures)")
    config.addinivalue_line("markers", "unit: starts no server and is not slow (set from its fixtures)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "control_plane" in used or item.get_closest_marker("own_cluster"):
            item.add_marker(pytest.mark.cluster)
        elif not used & SERVER_FIXTURES and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.unit)
