"""Controller scale: 200 tuning Workspaces applied at once on the local control plane.

    .venv/bin/python benchmarks/controller_scale.py              # 200 Workspaces
    .venv/bin/python benchmarks/controller_scale.py --count 20   # smoke run

ours:     the operator (``python -m tuning_controller.operator``, a child process) turns each Workspace
          into its training-config ConfigMap and its CPU pre-flight Job ``<ws>-data`` (data first: the
          GPU training Job only follows a successful data check, so "Job created" here is the data Job)
          and writes status (phase CheckingData, conditions). Latency per Workspace: from the moment its
          POST returned to the moment a watch on Jobs delivered its data Job.
baseline: the same client creating 200 Jobs directly (no controller): from POST return to the watch
          delivering it, i.e. the API server's own floor on this machine.

The control plane runs without a node (hack/control-plane.sh without --node): pods stay Pending, as
the brief allows. ``all_s``: from the first apply until all Jobs exist and every Workspace has
status.tuning.phase set. ``rss_mib`` is the controller's peak RSS
(sampled every 0.2 s), ``cpu_s`` its user+system CPU time for the whole run. ``--without-cel`` installs
the CRD without its CEL rules, to show how much of the latency is the API server validating Workspaces
(each create costs ~100 ms of CEL here). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuning_controller.crd import build_crd  # noqa: E402
from tuning_controller.kube import Kube, resource_path  # noqa: E402

WS_API = "kaito.sh/v1beta1"
APPLY_THREADS = 16


def start_control_plane(state: Path) -> Path:
    env = {**os.environ, "CONTROL_PLANE_OWNER_PID": str(os.getpid()), "CONTROL_PLANE_MAX_SECONDS": "1800"}
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


def install_crd(kube: Kube, cel: bool = True) -> None:
    kube.apply(build_crd() if cel else without_cel(build_crd()))

    def served() -> bool:
        try:
            kube.list(WS_API, "Workspace", "default")
        except Exception:
            return False
        return True

    wait(served, 60, "the Workspace CRD to be served")


def make_namespace(kube: Kube, name: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait(
        lambda: kube.get("v1", "ServiceAccount", name, "default"),
        60,
        f"ServiceAccount {name}/default",
    )


class JobWatch(threading.Thread):
    """Records when each Job of a namespace was first delivered by a watch."""

    def __init__(self, kube: Kube, namespace: str):
        super().__init__(daemon=True)
        self.kube = kube
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        api = self.kube.api
        path = resource_path("batch/v1", "Job", self.namespace)
        listed = self.kube.request("GET", path)
        version = listed["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            query = f"{path}?watch=1&resourceVersion={version}&timeoutSeconds=30&allowWatchBookmarks=true"
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
                    if event["type"] == "ADDED":
                        self.seen.setdefault(obj["metadata"]["name"], time.monotonic())
                if self.stop.is_set():
                    break
            resp.release_conn()


def workspace(name: str, namespace: str) -> dict:
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


def plain_job(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                }
            }
        },
    }


def create_all(kube: Kube, objects: list[dict]) -> dict[str, float]:
    """POST every object from a thread pool; returns name -> monotonic time its POST returned."""
    applied: dict[str, float] = {}

    def post(obj: dict) -> None:
        kube.create(obj)
        applied[obj["metadata"]["name"]] = time.monotonic()

    with ThreadPoolExecutor(APPLY_THREADS) as pool:
        list(pool.map(post, objects))
    return applied


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def latencies(applied: dict[str, float], seen: dict[str, float], job_of) -> list[float]:
    return [max(0.0, seen[job_of(name)] - t) for name, t in applied.items()]


def run(count: int, cel: bool = True) -> dict:
    state = Path(tempfile.mkdtemp(prefix="controller-scale-"))
    operator = None
    try:
        kubeconfig = start_control_plane(state)
        kube = Kube.from_environment(str(kubeconfig))
        install_crd(kube, cel)

        # Baseline: Jobs created directly.
        make_namespace(kube, "baseline")
        watch = JobWatch(kube, "baseline")
        watch.start()
        watch.ready.wait(10)
        applied = create_all(kube, [plain_job(f"job-{i}", "baseline") for i in range(count)])
        wait(lambda: len(watch.seen) >= count, 120, "baseline Jobs")
        watch.stop.set()
        base = latencies(applied, watch.seen, lambda n: n)

        # Ours: the controller.
        make_namespace(kube, "bench")
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": str(ROOT),
            "KAITO_TUNE_METRICS_PORT": "18480",
            "KAITO_TUNE_HEALTH_PORT": "18481",
        }
        with open(state / "operator.log", "wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "tuning_controller.operator"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = psutil.Process(operator.pid)

        def healthy() -> bool:
            if operator.poll() is not None:
                raise SystemExit(f"operator exited:\n{(state / 'operator.log').read_text()[-3000:]}")
            try:
                return requests.get("http://127.0.0.1:18481/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        wait(healthy, 60, "the operator's /healthz")
        peak_rss = [proc.memory_info().rss]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak_rss.append(proc.memory_info().rss)
                sampling.wait(0.2)

        threading.Thread(target=sample, daemon=True).start()
        watch = JobWatch(kube, "bench")
        watch.start()
        watch.ready.wait(10)
        started = time.monotonic()
        names = [f"ws-{i:03d}" for i in range(count)]
        applied = create_all(kube, [workspace(n, "bench") for n in names])
        apply_s = time.monotonic() - started

        def all_done() -> bool:
            if sum(1 for n in names if f"{n}-data" in watch.seen) < count:
                return False
            items = kube.list(WS_API, "Workspace", "bench")
            return (
                sum(1 for w in items if ((w.get("status") or {}).get("tuning") or {}).get("phase")) >= count
            )

        wait(all_done, 300, f"{count} data Jobs and statuses", interval=0.25)
        all_s = time.monotonic() - started
        scraped = requests.get("http://127.0.0.1:18480/metrics", timeout=5).text
        reconcile = {
            line.split("{")[0].rsplit("_", 1)[1]: float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith(
                ("kaito_tune_reconcile_duration_seconds_sum", "kaito_tune_reconcile_duration_seconds_count")
            )
        }
        sampling.set()
        watch.stop.set()
        ours = latencies(applied, watch.seen, lambda n: f"{n}-data")
        cpu = proc.cpu_times()
        p50 = statistics.median(ours)
        return {
            "workspaces": count,
            "crd_cel_rules": cel,
            "measured": "apply -> data Job created (data-first: the training Job follows the data check)",
            "p50_s": round(p50, 3),
            "p95_s": round(percentile(ours, 0.95), 3),
            "max_s": round(max(ours), 3),
            "all_s": round(all_s, 2),
            "apply_s": round(apply_s, 2),
            "reconciles": int(reconcile.get("count", 0)),
            "reconcile_mean_s": round(reconcile.get("sum", 0) / max(reconcile.get("count", 1), 1), 3),
            "rss_mib": round(max(peak_rss) / 2**20, 1),
            "cpu_s": round(cpu.user + cpu.system, 2),
            "baseline_direct_job_p50_s": round(statistics.median(base), 3),
            "baseline_direct_job_p95_s": round(percentile(base, 0.95), 3),
            "p95_ratio_vs_direct": round(percentile(ours, 0.95) / max(percentile(base, 0.95), 1e-3), 1),
            "goals_met": p50 < 1 and all_s < 60 and max(peak_rss) / 2**20 < 300,
            "cpu_count": os.cpu_count(),
        }
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        subprocess.run(
            [str(ROOT / "hack" / "control-plane.sh"), "stop", str(state)], check=False, timeout=120
        )
        if not os.environ.get("KEEP_STATE"):
            shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--without-cel", action="store_true", help="apply the CRD without its CEL rules")
    args = parser.parse_args()
    print(json.dumps(run(args.count, cel=not args.without_cel)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
