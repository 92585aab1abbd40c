"""Control planes of their own, without a node, for the own_cluster tests of the controller managers we
run beside ours (Kueue, JobSet): the shared cluster fixture starts the one real node, and such a test
needs none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from hack import jobset
from hack.cluster import (
    CONTROL_PLANE_TOOLS,
    ControlPlane,
    kube_json,
    missing_tools,
    missing_tools_message,
    start_control_plane,
    stop_control_plane,
)
from tuning_controller.kube import KubeError


@contextmanager
def nodeless_plane(
    tmp_path_factory: pytest.TempPathFactory, name: str, tools: tuple[str, ...]
) -> Iterator[ControlPlane]:
    """A control plane without node in a fresh folder ``name``, stopped afterwards; the test fails at
    once, naming the build, when ``tools`` (beyond the plane's own) are not built."""
    missing = missing_tools((*CONTROL_PLANE_TOOLS, *tools))
    if missing:
        pytest.fail(missing_tools_message(missing), pytrace=False)
    state_dir = tmp_path_factory.mktemp(name)
    plane = start_control_plane(state_dir, max_seconds=1200)
    try:
        yield plane
    finally:
        stop_control_plane(state_dir)


@contextmanager
def admin_client(plane: ControlPlane) -> Iterator[k8s_client.ApiClient]:
    """The plane's admin client, closed afterwards."""
    api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
    try:
        yield api
    finally:
        api.close()


def path(namespace: str, kind: str, name: str = "") -> str:
    """The REST path of the namespaced ``kind`` (plural) these tests read, or of one of them."""
    group = {"jobsets": f"/apis/{jobset.API_VERSION}", "jobs": "/apis/batch/v1", "services": "/api/v1"}[kind]
    return f"{group}/namespaces/{namespace}/{kind}" + (f"/{name}" if name else "")


def get(api: k8s_client.ApiClient, where: str) -> dict[str, Any]:
    """The object, or {} while there is none."""
    try:
        return kube_json(api, "GET", where)
    except KubeError as exc:
        if exc.not_found:
            return {}
        raise
