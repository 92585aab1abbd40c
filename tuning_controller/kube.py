"""The Kubernetes API on plain dicts: get, list, create, server-side apply, merge patch, delete.

The controller's pure renderers return plain dicts, so the shell that sends them speaks plain dicts too
(no generated model classes, no conversion). Every call goes through ``Kube.request``; errors come back as
``KubeError`` with the HTTP status and the API server's message.

    kube = Kube.from_environment()                       # in-cluster, else $KUBECONFIG / ~/.kube/config
    kube.apply(job)                                      # server-side apply as field manager "kaito-tune"
    ws = kube.get("kaito.sh/v1beta1", "Workspace", "ns", "name")
    retry_on_conflict(lambda: update(kube.get(...)))     # read-modify-write that re-reads on 409
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

FIELD_MANAGER = "kaito-tune"
POOL_SIZE = 128  # concurrent handler threads share one connection pool

# kind -> (plural, namespaced) for every kind this project touches; others fall back to kind + "s".
RESOURCES: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "ServiceAccount": ("serviceaccounts", True),
    "Service": ("services", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Node": ("nodes", False),
    "Namespace": ("namespaces", False),
    "Job": ("jobs", True),
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "NodeClaim": ("nodeclaims", False),
    "Workload": ("workloads", True),
    "Workspace": ("workspaces", True),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
}

T = TypeVar("T")


class KubeError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code, ``reason`` the Status reason (NotFound, Conflict...)."""

    def __init__(self, status: int, body: Any, what: str = ""):
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.reason = str(self.body.get("reason", ""))
        message = self.body.get("message") or str(body)
        super().__init__(f"{what}: HTTP {status}: {message}" if what else f"HTTP {status}: {message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: a stale resourceVersion (Conflict) or a create of an existing name (AlreadyExists)."""
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a kind (collection when ``name`` is None)."""
    plural, namespaced = RESOURCES.get(kind, (kind.lower() + "s", True))
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{quote(namespace)}"
    path = f"{base}/{plural}"
    if name:
        path += f"/{quote(name)}"
        if subresource:
            path += f"/{subresource}"
    return path


def object_path(obj: Mapping[str, Any], subresource: str | None = None) -> str:
    meta = obj.get("metadata") or {}
    return resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], subresource)


class Kube:
    """A thread-safe client over one ``kubernetes.client.ApiClient`` (its urllib3 pool)."""

    def __init__(self, api_client: k8s_client.ApiClient, field_manager: str = FIELD_MANAGER):
        self.api = api_client
        self.field_manager = field_manager

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, field_manager: str = FIELD_MANAGER) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig (``kubeconfig`` or default)."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig:
                raise k8s_config.ConfigException("explicit kubeconfig")
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = POOL_SIZE
        return cls(k8s_client.ApiClient(configuration), field_manager)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, Any] | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        if params:
            path = f"{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, headers, payload, post = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self.api.call_api(m, url, headers, payload, post, _request_timeout=timeout)
        resp.read()
        raw = resp.data or b""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"message": raw.decode(errors="replace")[:500]}
        if resp.status >= 300:
            raise KubeError(resp.status, data, f"{method} {path.split('?')[0]}")
        return data

    # ---- reads ---------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except KubeError as err:
            if err.not_found:
                return None
            raise

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        found = self.request(
            "GET",
            resource_path(api_version, kind, namespace),
            params={"labelSelector": label_selector} if label_selector else None,
        )
        return list(found.get("items") or [])

    # ---- writes --------------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST; raises KubeError (``already_exists``) when the name is taken."""
        meta = obj.get("metadata") or {}
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self.request("POST", path, obj, params={"fieldManager": self.field_manager})

    def apply(
        self, obj: Mapping[str, Any], *, force: bool = True, subresource: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply: the fields in ``obj`` become this field manager's; idempotent by design.

        ``force`` takes over fields another manager set (the controller owns what it renders).
        """
        return self.request(
            "PATCH",
            object_path(obj, subresource),
            obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": self.field_manager, "force": "true" if force else None},
        )

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch; put ``metadata.resourceVersion`` in ``patch`` to make it conditional (409)."""
        return self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name, subresource),
            patch,
            content_type="application/merge-patch+json",
            params={"fieldManager": self.field_manager},
        )

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete; False when it was already gone. ``uid`` guards against deleting a newer namesake."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body)
        except KubeError as err:
            if err.not_found:
                return False
            raise
        return True

    def wait_gone(
        self, api_version: str, kind: str, namespace: str | None, name: str, *, uid: str, timeout: float = 60
    ) -> bool:
        """Poll until the object with ``uid`` is gone (finalizers done); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.get(api_version, kind, namespace, name)
            if current is None or current["metadata"].get("uid") != uid:
                return True
            time.sleep(0.2)
        return False


def retry_on_conflict(
    fn: Callable[[], T], *, attempts: int = 6, backoff_s: float = 0.05, max_backoff_s: float = 1.0
) -> T:
    """Run ``fn`` (a read-modify-write) again on 409 Conflict, backing off (doubling, at most
    ``max_backoff_s`` a wait); other errors pass through.

    ``fn`` must re-read what it modifies on every call: a retry with the stale object would fail again.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except KubeError as err:
            if not err.conflict or err.already_exists or attempt == attempts - 1:
                raise
            time.sleep(min(backoff_s * (2**attempt), max_backoff_s))
    raise AssertionError("unreachable")
