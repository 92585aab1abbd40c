"""The local stack: a real cluster (control plane and node), the operator, an OCI registry and a data server.

One implementation for the demo (``python -m hack.demo``) and the test fixtures (tests/fixtures/,
tests/controller/conftest.py), so the demo runs exactly what the end-to-end tests check. Every part is a
child process (or a thread) stopped by its PID; the cluster also stops by itself when its owner process
dies or after ``max_seconds``, so nothing outlives a crashed run. What pods must reach (the registry, the
data server) listens on the node's address, which this machine reaches too.

    with LocalStack(state_dir) as stack:       # cluster + CRD + registry + data server
        stack.install_operator(progressIntervalSeconds=1)  # the chart's Deployment on the node

The parts, each usable alone: processes.py (ports, waiting, stopping by PID), cluster.py (the control plane
and node), operators.py (the operator as a process or as the chart installs it), servers.py (the registry
and the data server). This module puts them together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from hack.cluster import ControlPlane, Node, apply_workspace_crd, start_control_plane, stop_control_plane
from hack.operators import (
    ChartOperator,
    install_chart,
    local_operator_settings,
    publish_tiny_preset,
)
from hack.servers import DataServer, Registry, launch_registry, start_data_server

# --- everything together -----------------------------------------------------------------------------


class LocalStack:
    """The cluster with its node and the Workspace CRD, an authenticated registry and a data server under
    `state_dir`; operators started with :meth:`start_operator`. A context manager: leaving it (also on an
    error or Ctrl-C) stops every part, newest first, by PID."""

    def __init__(
        self, state_dir: Path, max_seconds: int = 3600, log: Callable[[str], None] = lambda _: None
    ) -> None:
        self.state_dir = state_dir
        self.max_seconds = max_seconds
        self.log = log
        self._stops = contextlib.ExitStack()
        self.control_plane: ControlPlane
        self.api: k8s_client.ApiClient
        self.node: Node
        self.registry: Registry
        self.data: DataServer

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        log = self.log
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log("starting the cluster (control plane, then kubelet, containerd, kube-proxy, CoreDNS)")
        plane_dir = self.state_dir / "control-plane"
        plane_dir.mkdir(exist_ok=True)
        self._stops.callback(stop_control_plane, plane_dir)
        self.control_plane = start_control_plane(plane_dir, self.max_seconds, node=True)
        assert self.control_plane.node is not None
        self.node = self.control_plane.node
        self.api = k8s_config.new_client_from_config(config_file=str(self.control_plane.kubeconfig))
        self._stops.callback(self.api.close)
        apply_workspace_crd(self.api)
        log(f"starting the OCI registry (htpasswd) and the data file server on the node ({self.node.ip})")
        self.registry = launch_registry(self.state_dir / "registry", with_auth=True, bind=self.node.ip)
        self._stops.callback(self.registry.stop)
        self.data = start_data_server(self.state_dir / "served", bind=self.node.ip)
        self._stops.callback(self.data.stop)
        log("publishing the tiny preset's weights to the local model mirror")
        log(f"  {publish_tiny_preset(self.node)}")

    def install_operator(self, **settings: Any) -> ChartOperator:
        """The operator as the chart's Deployment on the node (chart `settings` on top of input URLs from
        the data server and plain HTTP to the registry); uninstalled when the stack stops."""
        values = local_operator_settings(self.node, self.registry.host, **settings)
        operator = install_chart(self.api, "kaito-tune", {"settings": values})
        self._stops.callback(operator.uninstall)
        return operator

    def stop(self) -> None:
        self._stops.close()
