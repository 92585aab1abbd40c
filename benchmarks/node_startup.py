"""The local node's costs: cluster start (warm caches) and node Ready, a trivial pod from create to
Succeeded through the API server, scheduler and kubelet, against the same container run straight on
containerd with ctr (the runtime's own floor, no Kubernetes), and the cluster's stop.

    .venv/bin/python benchmarks/node_startup.py [--pods 5]

Needs root and no other local node running. Prints one JSON object; ``pod_vs_ctr`` is the ratio of the
medians (paired runs, alternating).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import config as k8s_config

from hack.cluster import kube_json, start_control_plane, stop_control_plane, tool_path
from hack.processes import wait_for

BUSYBOX = "localhost/kaito-tune/busybox:1.35"
NODE_RUN = "/var/lib/kaito-tune-node"  # hack/node.sh


def pod_seconds(api, namespace: str, name: str) -> float:
    manifest = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["true"]}],
        },
    }
    started = time.monotonic()
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", manifest)
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    wait_for(lambda: kube_json(api, "GET", path)["status"].get("phase") == "Succeeded", 60, name, 0.05)
    return time.monotonic() - started


def ctr_seconds(index: int) -> float:
    ctr = [str(tool_path("ctr")), "--address", f"{NODE_RUN}/containerd.sock", "-n", "k8s.io"]
    started = time.monotonic()
    subprocess.run([*ctr, "run", "--rm", BUSYBOX, f"bench-{index}", "true"], check=True, capture_output=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="node-bench-"))
    started = time.monotonic()
    plane = start_control_plane(state, max_seconds=900, node=True)
    start_s = time.monotonic() - started
    try:
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        kube_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
        wait_for(
            lambda: kube_json(api, "GET", "/api/v1/namespaces/bench/serviceaccounts").get("items"), 30, "SA"
        )
        pods, ctr = [], []
        for i in range(args.pods):
            pods.append(pod_seconds(api, "bench", f"p{i}"))
            ctr.append(ctr_seconds(i))
    finally:
        started = time.monotonic()
        stop_control_plane(state)
        stop_s = time.monotonic() - started
    pod_med, ctr_med = statistics.median(pods), statistics.median(ctr)
    result = {
        "cluster_start_s": round(start_s, 1),
        "node_ready_after_kubelet_s": plane.node.ready_seconds if plane.node else None,
        "pod_create_to_succeeded_s": {"median": round(pod_med, 2), "runs": [round(x, 2) for x in pods]},
        "ctr_run_baseline_s": {"median": round(ctr_med, 2), "runs": [round(x, 2) for x in ctr]},
        "pod_vs_ctr": round(pod_med / ctr_med, 2),
        "cluster_stop_s": round(stop_s, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
