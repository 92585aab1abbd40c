"""What a process started by the pod executor sees: volumes at their mountPath, downward API values,
$(VAR) expansion, and a service-account token that in-cluster clients use under real RBAC."""

from __future__ import annotations

import base64
import textwrap

from hack.local_stack import free_port
from tests.controlplane.workloads import container, pod_done
from tests.fixtures.cluster import kube_json, wait_for

# Runs inside the "container" with the repository's Python: in-cluster config from the projected token.
IN_CLUSTER_SCRIPT = textwrap.dedent(
    """
    import sys
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    config.load_incluster_config()
    core = client.CoreV1Api()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    print("configmap:", core.read_namespaced_config_map("settings", ns).data["mode"])
    try:
        core.list_namespaced_secret(ns)
        print("secrets: allowed")
    except ApiException as err:
        print("secrets:", err.status)
    """
)


def test_volumes_env_and_downward_api_are_visible_to_the_process(kube_client, namespace, pod_executor):
    ns_path = f"/api/v1/namespaces/{namespace}"
    kube_json(
        kube_client,
        "POST",
        f"{ns_path}/configmaps",
        {"metadata": {"name": "settings"}, "data": {"mode": "fast"}},
    )
    secret_value = base64.b64encode(b"s3cr3t").decode()
    kube_json(
        kube_client,
        "POST",
        f"{ns_path}/secrets",
        {"metadata": {"name": "creds"}, "data": {"token": secret_value}},
    )
    script = " && ".join(
        [
            "cat /etc/settings/mode.txt && echo",
            "{ touch /etc/settings/new 2>/dev/null && echo writable || echo read-only; }",
            "stat -c %a /etc/settings/mode.txt",
            "cat /etc/creds/token && echo",
            "cat /srv/job/from-init",
            "cat /etc/podinfo/labels && echo",
            "echo env: $POD_NAME $POD_NAMESPACE $NODE $SA $POD_IP $TEAM $MODE_FROM_CM $TOKEN_FROM_SECRET",
            "echo args: $(GREETING)",
            "pwd",
        ]
    )
    pod = {
        "metadata": {"name": "sees-all", "labels": {"team": "tuning"}},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [
                {
                    "name": "settings",
                    "configMap": {
                        "name": "settings",
                        "items": [{"key": "mode", "path": "mode.txt", "mode": 0o600}],
                    },
                },
                {"name": "creds", "secret": {"secretName": "creds"}},
                {"name": "work", "emptyDir": {}},
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
                {
                    "name": "podinfo",
                    "downwardAPI": {
                        "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                    },
                },
            ],
            "initContainers": [
                container(
                    "prepare",
                    "echo prepared-by-init > /srv/job/from-init",
                    volumeMounts=[{"name": "work", "mountPath": "/srv/job"}],
                )
            ],
            "containers": [
                {
                    # $(GREETING) in the command is expanded by Kubernetes' rules before the shell runs.
                    **container("main", script),
                    "workingDir": "/srv/job",
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        # after POD_NAME: $(VAR) expansion sees only the names defined before
                        {"name": "GREETING", "value": "hello-$(POD_NAME)"},
                        {
                            "name": "POD_NAMESPACE",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
                        {
                            "name": "MODE_FROM_CM",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                        },
                        {
                            "name": "TOKEN_FROM_SECRET",
                            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                        },
                    ],
                    "volumeMounts": [
                        {"name": "settings", "mountPath": "/etc/settings"},
                        {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                        {"name": "work", "mountPath": "/srv/job"},
                        {"name": "shm", "mountPath": "/dev/shm"},
                        {"name": "podinfo", "mountPath": "/etc/podinfo"},
                    ],
                }
            ],
        },
    }
    kube_json(kube_client, "POST", f"{ns_path}/pods", pod)

    done = pod_done(kube_client, namespace, "sees-all")

    output = pod_executor.log(namespace, "sees-all", "main")
    assert done["status"]["phase"] == "Succeeded", output
    assert output.splitlines() == [
        "fast",
        "read-only",  # configMap volumes are read-only, as the kubelet mounts them
        "600",
        "s3cr3t",
        "prepared-by-init",
        'team="tuning"',
        f"env: sees-all {namespace} {pod_executor.node_name} default 127.0.0.1 tuning fast s3cr3t",
        "args: hello-sees-all",
        "/srv/job",
    ]


def test_service_account_token_authenticates_and_rbac_is_enforced(kube_client, namespace, pod_executor):
    """The projected token (injected by the ServiceAccount admission plugin) works with in-cluster
    config; the pod's identity may read the ConfigMap its Role grants and is refused Secrets."""
    ns_path = f"/api/v1/namespaces/{namespace}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    kube_json(
        kube_client,
        "POST",
        f"{ns_path}/configmaps",
        {"metadata": {"name": "settings"}, "data": {"mode": "fast"}},
    )
    kube_json(
        kube_client,
        "POST",
        f"{rbac}/roles",
        {
            "metadata": {"name": "read-settings"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    kube_json(
        kube_client,
        "POST",
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "read-settings"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-settings"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
        },
    )
    pod = {
        "metadata": {"name": "in-cluster"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{**container("main", ""), "command": ["python", "-c", IN_CLUSTER_SCRIPT]}],
        },
    }
    kube_json(kube_client, "POST", f"{ns_path}/pods", pod)

    done = pod_done(kube_client, namespace, "in-cluster", timeout=60)

    output = pod_executor.log(namespace, "in-cluster", "main")
    assert done["status"]["phase"] == "Succeeded", output
    assert output.splitlines() == ["configmap: fast", "secrets: 403"]
    volumes = {v["name"]: v for v in done["spec"]["volumes"]}
    assert any("projected" in v and name.startswith("kube-api-access-") for name, v in volumes.items())


def test_readiness_probes_gate_the_ready_condition(kube_client, namespace, pod_executor):
    """Ready only once the httpGet probe answers and the exec probe (run inside the container's mount
    namespace, where /flags is the pod's emptyDir) succeeds."""
    port = free_port()
    pod = {
        "metadata": {"name": "server"},
        "spec": {
            "volumes": [{"name": "flags", "emptyDir": {}}],
            "containers": [
                {
                    **container("web", f"sleep 3; exec python -m http.server {port} --bind 127.0.0.1"),
                    "ports": [{"name": "http", "containerPort": port}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                },
                {
                    **container("flagger", "sleep 3; touch /flags/ready; exec sleep 300"),
                    "volumeMounts": [{"name": "flags", "mountPath": "/flags"}],
                    "readinessProbe": {"exec": {"command": ["cat", "/flags/ready"]}, "periodSeconds": 1},
                },
            ],
        },
    }
    path = f"/api/v1/namespaces/{namespace}/pods/server"
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def statuses() -> list[dict]:
        return kube_json(kube_client, "GET", path)["status"].get("containerStatuses") or []

    def conditions() -> dict[str, str]:
        return {c["type"]: c["status"] for c in kube_json(kube_client, "GET", path)["status"]["conditions"]}

    first = wait_for(
        lambda: (s := statuses()) and all("running" in c["state"] for c in s) and s,
        20,
        "both containers to run",
    )
    assert [c["ready"] for c in first] == [False, False]

    wait_for(lambda: conditions()["Ready"] == "True", 30, "the pod to become Ready")
    assert [c["ready"] for c in statuses()] == [True, True]
    assert conditions()["ContainersReady"] == "True"
