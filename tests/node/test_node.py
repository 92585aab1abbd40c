"""The local cluster's real node (hack/node.sh): what a pod of the product relies on, run in real
containers from the node's registry: the node and its GPU, init containers with Secret, emptyDir and the
service-account token, the API server through the `kubernetes` Service, Service DNS (CoreDNS) and a
ClusterIP routed by kube-proxy, an image volume, a memory limit, and no way out of the machine."""

from __future__ import annotations

import subprocess
import time

import requests

from tests.fixtures.cluster import kube_json, pod_log, wait_for

BUSYBOX = "localhost/kaito-tune/busybox:1.35"
TOOLS = "ghcr.io/kaito-tune/tools:0.1.0"
NON_ROOT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
LOCKED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def box(name: str, script: str, image: str = BUSYBOX, **extra) -> dict:
    return {"name": name, "image": image, "command": ["sh", "-c", script], "securityContext": LOCKED, **extra}


def pod(name: str, containers: list[dict], **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "securityContext": NON_ROOT, "containers": containers, **spec},
    }


def run_pod(api, namespace: str, manifest: dict, timeout: float = 60) -> dict:
    """Create the pod and wait until it Succeeded or Failed; returns the final pod."""
    name = manifest["metadata"]["name"]
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", manifest)

    def finished() -> dict | None:
        got = kube_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return got if got.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return wait_for(finished, timeout, f"pod {namespace}/{name} to finish", interval=0.3)


def test_node_is_ready_with_real_versions_its_gpu_and_labels(kube_client, node):
    got = kube_json(kube_client, "GET", f"/api/v1/nodes/{node.name}")
    ready = next(c for c in got["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert got["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert got["metadata"]["labels"]["apps"] == "phi-3"
    info = got["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"].startswith("containerd://2.4.2")
    assert kube_json(kube_client, "GET", "/version")["gitVersion"] == "v1.36.3"
    assert node.ready_seconds < 5, f"node Ready {node.ready_seconds}s after kubelet started"


def test_init_container_secret_emptydir_and_token_as_non_root(kube_client, namespace):
    kube_json(
        kube_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "s"}, "stringData": {"key": "s3cr3t-value"}},
    )
    manifest = pod(
        "volumes",
        [
            box(
                "main",
                "cat /work/from-init; echo secret=$(cat /secret/key); id -u;"
                " test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token;"
                " cat /var/run/secrets/kubernetes.io/serviceaccount/namespace",
                volumeMounts=[
                    {"name": "work", "mountPath": "/work"},
                    {"name": "secret", "mountPath": "/secret", "readOnly": True},
                ],
            )
        ],
        initContainers=[
            box(
                "init",
                "echo from-init > /work/from-init",
                volumeMounts=[{"name": "work", "mountPath": "/work"}],
            )
        ],
        volumes=[{"name": "work", "emptyDir": {}}, {"name": "secret", "secret": {"secretName": "s"}}],
    )
    started = time.monotonic()
    done = run_pod(kube_client, namespace, manifest)
    took = time.monotonic() - started
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert pod_log(kube_client, namespace, "volumes", "main").split() == [
        "from-init",
        "secret=s3cr3t-value",
        "1000",
        "token",
        namespace,
    ]
    assert done["status"]["podIP"].startswith("10.244.0.")
    assert took < 10, f"a trivial pod took {took:.1f}s from create to Succeeded"


def test_api_server_is_reached_through_the_kubernetes_service(kube_client, namespace):
    """In-cluster config: 10.96.0.1 (kube-proxy), the service-account token, the cluster CA."""
    script = (
        "from kubernetes import client, config; config.load_incluster_config(); "
        "print(client.VersionApi().get_code().git_version)"
    )
    manifest = pod("in-cluster", [{**box("main", ""), "image": TOOLS, "command": ["python", "-c", script]}])
    done = run_pod(kube_client, namespace, manifest, timeout=120)
    log = pod_log(kube_client, namespace, "in-cluster", "main")
    assert done["status"]["phase"] == "Succeeded", log
    assert log.strip() == "v1.36.3"


def test_service_dns_name_and_cluster_ip_route_to_the_pod(kube_client, namespace):
    server = pod(
        "web",
        [
            box(
                "httpd",
                "mkdir /tmp/www && echo hello-from-web > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www",
                readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            )
        ],
    )
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/pods", server)
    service = kube_json(
        kube_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster_ip = service["spec"]["clusterIP"]

    def ready() -> bool:
        got = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/pods/web")
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in got.get("status", {}).get("conditions") or []
        )

    wait_for(ready, 60, "the web pod to be Ready")

    def routed() -> bool:  # kube-proxy programs the endpoint a moment after the pod is Ready
        try:
            return requests.get(f"http://{cluster_ip}/", timeout=2).text == "hello-from-web\n"
        except requests.ConnectionError:
            return False

    # kube-proxy's rules serve this machine too
    wait_for(routed, 30, f"the ClusterIP {cluster_ip} routed to the web pod")
    # A Python client as the product's pods are: glibc's resolver, the search path for the short name.
    script = (
        "import socket, urllib.request; "
        f"print(socket.gethostbyname('web.{namespace}.svc.cluster.local')); "
        "print(urllib.request.urlopen('http://web/', timeout=5).read().decode())"
    )
    client = pod("client", [{**box("main", ""), "image": TOOLS, "command": ["python", "-c", script]}])
    done = run_pod(kube_client, namespace, client, timeout=120)
    log = pod_log(kube_client, namespace, "client", "main")
    assert done["status"]["phase"] == "Succeeded", log
    assert log.split() == [cluster_ip, "hello-from-web"]  # CoreDNS's answer, then kube-proxy's route


def test_image_volume_mounts_an_image_read_only_with_sub_path(kube_client, namespace):
    manifest = pod(
        "image-volume",
        [
            box(
                "main",
                "/img/busybox echo runs-from-volume; ls /whole/bin/sh;"
                " touch /img/x 2>/dev/null || echo read-only",
                volumeMounts=[
                    {"name": "img", "mountPath": "/img", "subPath": "bin"},
                    {"name": "img", "mountPath": "/whole"},
                ],
            )
        ],
        volumes=[{"name": "img", "image": {"reference": BUSYBOX, "pullPolicy": "IfNotPresent"}}],
    )
    done = run_pod(kube_client, namespace, manifest)
    log = pod_log(kube_client, namespace, "image-volume", "main")
    assert done["status"]["phase"] == "Succeeded", log
    assert log.split() == ["runs-from-volume", "/whole/bin/sh", "read-only"]


def test_memory_limit_ends_in_oom_killed(kube_client, namespace):
    hog = box(
        "hog",
        "dd if=/dev/zero of=/dev/null bs=200M count=1",
        resources={"limits": {"memory": "32Mi"}, "requests": {"memory": "32Mi"}},
    )
    done = run_pod(kube_client, namespace, pod("hog", [hog]))
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Failed"
    assert terminated["reason"] == "OOMKilled", terminated


def _dropped() -> int:
    """Packets the node's FORWARD guard dropped so far (hack/node.sh FORWARD_CHAIN)."""
    out = subprocess.run(
        ["iptables", "-w", "-L", "KAITO-TUNE-NODE", "-v", "-x", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())


def test_pods_cannot_reach_addresses_outside_the_machine(kube_client, namespace):
    """A documentation address (TEST-NET-2, routed nowhere) stands for the outside world: the SYN is
    dropped by the node's FORWARD guard before it could leave, and the counter proves which rule did it."""
    before = _dropped()
    script = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('198.51.100.7', 80), timeout=3)\n"
        "    print('reached')\n"
        "except OSError as exc:\n"
        "    print('blocked', type(exc).__name__)\n"
    )
    probe = {**box("main", ""), "image": TOOLS, "command": ["python", "-c", script]}
    done = run_pod(kube_client, namespace, pod("egress", [probe]), timeout=120)
    log = pod_log(kube_client, namespace, "egress", "main")
    assert done["status"]["phase"] == "Succeeded", log
    assert log.split() == ["blocked", "TimeoutError"]  # dropped, not refused: nothing answered
    assert _dropped() > before
