"""What the benchmarks that run on the local control plane share: starting it (hack/control-plane.sh,
without a node, bounded by CONTROL_PLANE_OWNER_PID and CONTROL_PLANE_MAX_SECONDS), installing the
Workspace CRD, namespaces, following objects by watches, the API server's request counters and CPU
spinners. Used by benchmarks/controller_scale.py and benchmarks/fault_suite.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuning_controller.crd import build_crd  # noqa: E402
from tuning_controller.kube import Kube, resource_path  # noqa: E402

WS_API = "kaito.sh/v1beta1"
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def start_control_plane(state: Path, max_seconds: int = 1800) -> Path:
    """hack/control-plane.sh start (no node) in ``state``; stops by itself once this process is gone or
    after ``max_seconds``. Returns the admin kubeconfig."""
    env = {
        **os.environ,
        "CONTROL_PLANE_OWNER_PID": str(os.getpid()),
        "CONTROL_PLANE_MAX_SECONDS": str(max_seconds),
    }
    out = subprocess.run(
        [str(ROOT / "hack" / "control-plane.sh"), "start", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("export KUBECONFIG="))
    return Path(line.split("=", 1)[1])


def stop_control_plane(state: Path) -> None:
    subprocess.run([str(ROOT / "hack" / "control-plane.sh"), "stop", str(state)], check=False, timeout=120)


def wait(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def without_cel(obj):
    """The CRD without its CEL rules (``--without-cel``: attributes API-server time to CEL)."""
    if isinstance(obj, dict):
        return {k: without_cel(v) for k, v in obj.items() if k != "x-kubernetes-validations"}
    if isinstance(obj, list):
        return [without_cel(v) for v in obj]
    return obj


def install_crd(kube: Kube, cel: bool = True, crd: dict | None = None) -> None:
    """The tree's CRD, or ``crd`` (``--crd``: the same CRD for trees compared with each other)."""
    crd = crd or build_crd()
    kube.apply(crd if cel else without_cel(crd))

    def served() -> bool:
        try:
            kube.list(WS_API, "Workspace", "default")
        except Exception:
            return False
        return True

    wait(served, 60, "the Workspace CRD to be served")
    # The first write of a new CRD's objects is slow (~1.5 s here): made before either side is measured.
    path = resource_path(WS_API, "Workspace", "default")
    kube.request("POST", path, workspace("warm-up", "default"), params={"dryRun": "All"})


def make_namespace(kube: Kube, name: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait(
        lambda: kube.get("v1", "ServiceAccount", name, "default"),
        60,
        f"ServiceAccount {name}/default",
    )


class Watch(threading.Thread):
    """Records when a watch first delivered each object of a kind in a namespace that ``shows`` holds
    for (default: any), and hands it to ``on_seen``. The benchmark follows what it measures by watches,
    not by listing it again and again, so that its own reads do not load the API server it measures."""

    def __init__(
        self,
        kube: Kube,
        api_version: str,
        kind: str,
        namespace: str,
        shows: Callable[[dict], bool] = lambda obj: True,
        on_seen: Callable[[dict], None] = lambda obj: None,
    ):
        super().__init__(daemon=True)
        self.kube = kube
        self.path = resource_path(api_version, kind, namespace)
        self.shows, self.on_seen = shows, on_seen
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        api = self.kube.api
        listed = self.kube.request("GET", self.path)
        version = listed["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            query = f"{self.path}?watch=1&resourceVersion={version}&timeoutSeconds=30"
            query += "&allowWatchBookmarks=true"
            m, url, headers, _, _ = api.param_serialize("GET", query, auth_settings=["BearerToken"])
            resp = api.rest_client.pool_manager.request(
                m, url, headers=headers, preload_content=False, timeout=40
            )
            self.ready.set()
            buffer = b""
            for chunk in resp.stream(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    name = obj["metadata"].get("name")  # none on BOOKMARK and ERROR events
                    if event["type"] in ("ADDED", "MODIFIED") and name not in self.seen and self.shows(obj):
                        self.seen[name] = time.monotonic()
                        self.on_seen(obj)
                if self.stop.is_set():
                    break
            resp.release_conn()


def api_requests(kube: Kube) -> Counter:
    """Counters from the API server's /metrics: (verb, resource[/subresource]) -> requests answered, and
    ("seconds", verb, resource) -> the time it took to answer them."""
    api = kube.api
    m, url, headers, _, _ = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    resp = api.call_api(m, url, headers, None, None, _request_timeout=30)
    resp.read()
    counts: Counter = Counter()
    for line in resp.data.decode().splitlines():
        name = line.split("{", 1)[0]
        if name not in ("apiserver_request_total", "apiserver_request_duration_seconds_sum"):
            continue
        labels = dict(_LABEL.findall(line.split("}", 1)[0]))
        sub = labels.get("subresource")
        key = (labels.get("verb", ""), labels.get("resource", "") + (f"/{sub}" if sub else ""))
        value = float(line.rsplit(" ", 1)[1])
        if name == "apiserver_request_total":
            counts[key] += int(value)
        else:
            counts[("seconds", *key)] += value
    return counts


def busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin a CPU each (``--busy``): the machine under load beside the run."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def workspace(name: str, namespace: str) -> dict:
    """A valid tuning Workspace with an instanceType (a NodeClaim once its data check passed)."""
    return {
        "apiVersion": WS_API,
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": "bench"}},
        },
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://data.example.com/bench/train.parquet"]},
            "output": {"image": "registry.example.com/bench/adapter:v1", "imagePushSecret": "push"},
        },
    }
