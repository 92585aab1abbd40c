"""Controller scale: 200 tuning Workspaces applied at once on the local control plane.

    .venv/bin/python benchmarks/controller_scale.py              # 200 Workspaces
    .venv/bin/python benchmarks/controller_scale.py --count 20   # smoke run
    .venv/bin/python benchmarks/controller_scale.py --busy 1     # with one CPU-spinning process beside it
    .venv/bin/python benchmarks/controller_scale.py --floor      # no operator: an instant controller

ours:     the operator (``python -m tuning_controller.operator``, a child process) turns each Workspace
          into its training-config ConfigMap and its CPU pre-flight Job ``<ws>-data`` (data first: the
          GPU training Job only follows a successful data check, so "Job created" here is the data Job)
          and writes status (phase CheckingData, conditions). Latency per Workspace: from the moment its
          POST returned to the moment a watch on Jobs delivered its data Job.
floor:    (``--floor``) the same writes made at once, as a controller that took no time would make them
          when its watch delivers the Workspace (``instant_controller``): what any controller pays.
baseline: the same client creating 200 Jobs directly (no controller): from POST return to the watch
          delivering it, i.e. the API server's own floor on this machine. They are created suspended,
          and the measurement of the controller starts once the Job controller has settled them, so
          their pods, events and status writes do not run into it.

The control plane runs without a node (hack/control-plane.sh without --node): pods stay Pending, as
the brief allows. ``all_s``: from the first apply until all Jobs exist and every Workspace has
status.tuning.phase set. ``rss_mib`` is the controller's peak RSS
(sampled every 0.2 s), ``cpu_s`` its user+system CPU time for the whole run. ``--without-cel`` installs
the CRD without its CEL rules, to show how much of the latency is the API server validating Workspaces
(each create costs ~100 ms of CEL here); ``--crd crd.json`` installs a given CRD, so that two trees
compared with each other run against the same one. ``writes`` counts the API server's answers (its
``apiserver_request_total``) to writes of the kinds the controller writes, between the first apply and
the moment they stopped; ``api_ms_per_write`` is the API server's mean time per such write, and
``window_cpu_s`` the CPU seconds the operator and the control plane's processes used from the first
apply until the last data Job and status were seen. The benchmark follows Jobs and Workspaces by
watches, never by listing them, so that its own reads load the API server as little as a user's
``kubectl get -w`` would. Prints one JSON object.
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cluster_bench import (  # noqa: E402
    WS_API,
    Watch,
    api_requests,
    busy_loops,
    install_crd,
    make_namespace,
    start_control_plane,
    stop_control_plane,
    wait,
    workspace,
)
from tuning_controller.conditions import now_rfc3339  # noqa: E402
from tuning_controller.kube import Kube  # noqa: E402
from tuning_controller.plan import Plan  # noqa: E402
from tuning_controller.settings import Settings  # noqa: E402
from tuning_controller.status import status_patch  # noqa: E402
from tuning_controller.tuning_reconcile import Target, decide, tuning_target  # noqa: E402

APPLY_THREADS = 16
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
# What the controller writes for a Workspace. Pods, jobs/status, pods/status and events are left out:
# the job controller and the scheduler write those too, and the counter does not say who asked.
CONTROLLER_RESOURCES = (
    "workspaces",
    "workspaces/status",
    "jobs",
    "configmaps",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "persistentvolumeclaims",
)


def has_phase(ws: dict) -> bool:
    return bool(((ws.get("status") or {}).get("tuning") or {}).get("phase"))


def settled_requests(kube: Kube, quiet_s: float = 3.0, timeout: float = 30.0) -> Counter:
    """The request counters once the controller's writes stopped for ``quiet_s`` (kopf patches after
    the handler returned, so the last writes follow the status)."""
    deadline = time.monotonic() + timeout
    last, since = api_requests(kube), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = api_requests(kube)
        if controller_writes(now, last):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def controller_writes(after: Counter, before: Counter) -> dict[str, int]:
    """Writes to the controller's kinds between two counter readings (the benchmark's Workspace POSTs
    left out), as ``"VERB resource": n``."""
    out = {}
    for key, n in after.items():
        if len(key) != 2:
            continue
        verb, resource = key
        new = n - before.get(key, 0)
        mine = verb in WRITE_VERBS and resource in CONTROLLER_RESOURCES
        if mine and new and key != ("POST", "workspaces"):
            out[f"{verb} {resource}"] = new
    return dict(sorted(out.items()))


def write_latencies(after: Counter, before: Counter, writes: dict[str, int]) -> dict[str, float]:
    """Mean milliseconds the API server took per write of each kind in ``writes`` (and the Workspace
    POSTs), between two counter readings."""
    out = {}
    for kind in ["POST workspaces", *writes]:
        verb, resource = kind.split(" ", 1)
        n = after.get((verb, resource), 0) - before.get((verb, resource), 0)
        seconds = after.get(("seconds", verb, resource), 0) - before.get(("seconds", verb, resource), 0)
        if n:
            out[kind] = round(seconds / n * 1000, 1)
    return out


def plain_job(name: str, namespace: str) -> dict:
    """A Job created suspended: no pods, events and status writes of its own run into the measurement
    of the controller that follows."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                }
            },
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


def baseline(kube: Kube, count: int) -> list[float]:
    """POST return -> watch delivery of ``count`` Jobs created directly: the API server's floor."""
    make_namespace(kube, "baseline")
    watch = Watch(kube, "batch/v1", "Job", "baseline")
    watch.start()
    watch.ready.wait(10)
    applied = create_all(kube, [plain_job(f"job-{i}", "baseline") for i in range(count)])
    wait(lambda: len(watch.seen) >= count, 120, "baseline Jobs")
    watch.stop.set()

    def settled() -> bool:  # the Job controller marked every Job suspended: it is done with them
        jobs = kube.list("batch/v1", "Job", "baseline")
        return sum(1 for j in jobs if (j.get("status") or {}).get("conditions")) >= count

    wait(settled, 120, "the Job controller to settle the baseline Jobs", interval=0.5)
    return latencies(applied, watch.seen, lambda n: n)


def start_operator(kubeconfig: Path, state: Path) -> subprocess.Popen:
    """``python -m tuning_controller.operator`` as a child process, once its /healthz answers."""
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

    def healthy() -> bool:
        if operator.poll() is not None:
            raise SystemExit(f"operator exited:\n{(state / 'operator.log').read_text()[-3000:]}")
        try:
            return requests.get("http://127.0.0.1:18481/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    wait(healthy, 60, "the operator's /healthz")
    return operator


class PeakRss(threading.Thread):
    """A process's peak RSS, sampled every 0.2 s until ``stop`` is set."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.2)


def reconcile_metrics() -> dict[str, float]:
    """The operator's reconcile duration histogram: {"sum": seconds, "count": reconciles}."""
    scraped = requests.get("http://127.0.0.1:18480/metrics", timeout=5).text
    names = ("kaito_tune_reconcile_duration_seconds_sum", "kaito_tune_reconcile_duration_seconds_count")
    return {
        line.split("{")[0].rsplit("_", 1)[1]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith(names)
    }


def instant_controller(kubeconfig: Path, count: int, pool: ThreadPoolExecutor) -> Watch:
    """``--floor``: what a controller that took no time at all would do. The writes and the status that
    the operator's own pure reconcile plans for each Workspace are computed before the clock starts;
    when its watch delivers a new Workspace, a thread of ``pool`` (as many as the operator's handler
    threads) makes them (the owner's uid filled in). What remains is what any controller making these
    writes pays: the watch's delivery and the API server's, etcd's and the cluster's work on the same
    objects under the same burst."""
    planned = {}
    for i in range(count):
        obj = {**workspace(f"ws-{i:03d}", "bench")}
        obj["metadata"] = {**obj["metadata"], "uid": "to-be-set", "generation": 1}
        target = tuning_target(obj, None, (None, []), Settings(), now_rfc3339())
        plan = decide(target, {}) if isinstance(target, Target) else target
        assert isinstance(plan, Plan) and plan.status is not None, plan
        planned[obj["metadata"]["name"]] = plan
    kube = Kube.from_environment(str(kubeconfig))  # its own connections, as the operator has

    def write(created: dict) -> None:
        plan = planned[created["metadata"]["name"]]
        owner = {"uid": created["metadata"]["uid"]}
        for w in plan.writes:
            meta = w.obj["metadata"]
            refs = [{**ref, **owner} for ref in meta.get("ownerReferences", ())]
            kube.create({**w.obj, "metadata": {**meta, "ownerReferences": refs}})
        assert plan.status is not None
        patch = status_patch(created, plan.status)
        assert patch is not None
        meta = created["metadata"]
        kube.merge_patch(WS_API, "Workspace", meta["namespace"], meta["name"], patch, subresource="status")

    def follow(obj: dict) -> None:
        pool.submit(write, obj)

    return Watch(kube, WS_API, "Workspace", "bench", on_seen=follow)


def measure(kube: Kube, count: int, floor: Watch | None = None) -> tuple[list[float], float, float]:
    """(apply -> data Job latencies, all_s, apply_s) of ``count`` Workspaces POSTed at once; ``floor``:
    the instant controller's watch, started with the benchmark's own."""
    watch = Watch(kube, "batch/v1", "Job", "bench")
    statuses = Watch(kube, WS_API, "Workspace", "bench", has_phase)
    watches = (watch, statuses, floor) if floor else (watch, statuses)
    for w in watches:
        w.start()
        w.ready.wait(10)
    started = time.monotonic()
    names = [f"ws-{i:03d}" for i in range(count)]
    applied = create_all(kube, [workspace(n, "bench") for n in names])
    apply_s = time.monotonic() - started

    def all_done() -> bool:
        return all(f"{n}-data" in watch.seen and n in statuses.seen for n in names)

    wait(all_done, 300, f"{count} data Jobs and statuses", interval=0.1)
    all_s = time.monotonic() - started
    for w in watches:
        w.stop.set()
    return latencies(applied, watch.seen, lambda n: f"{n}-data"), all_s, apply_s


def control_plane_cpu(state: Path) -> dict[str, float]:
    """CPU seconds (user + system) each control-plane process has used so far (state/pids/*.pid)."""
    out = {}
    for pid_file in sorted((state / "pids").glob("*.pid")):
        try:
            cpu = psutil.Process(int(pid_file.read_text())).cpu_times()
        except (psutil.Error, ValueError):
            continue
        out[pid_file.stem] = cpu.user + cpu.system
    return out


def stop_all(operator: subprocess.Popen | None, loops: list[subprocess.Popen], state: Path) -> None:
    for loop in loops:
        loop.kill()
    if operator is not None and operator.poll() is None:
        operator.terminate()
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
    stop_control_plane(state)
    if not os.environ.get("KEEP_STATE"):
        shutil.rmtree(state, ignore_errors=True)


def run(count: int, cel: bool = True, busy: int = 0, crd: dict | None = None, floor: bool = False) -> dict:
    state = Path(tempfile.mkdtemp(prefix="controller-scale-"))
    operator = None
    pool = ThreadPoolExecutor(Settings().max_workers)  # --floor's instant controller
    loops = busy_loops(busy)
    try:
        kubeconfig = start_control_plane(state)
        kube = Kube.from_environment(str(kubeconfig))
        install_crd(kube, cel, crd)
        base = baseline(kube, count)

        make_namespace(kube, "bench")
        follower = instant_controller(kubeconfig, count, pool) if floor else None
        if not floor:
            operator = start_operator(kubeconfig, state)
        rss = PeakRss(operator.pid if operator else os.getpid())
        rss.start()
        requests_before, cpu_before = api_requests(kube), control_plane_cpu(state)
        cpu_before["operator"] = sum(rss.proc.cpu_times()[:2])
        ours, all_s, apply_s = measure(kube, count, follower)
        cpu_after = control_plane_cpu(state)
        cpu_after["operator"] = sum(rss.proc.cpu_times()[:2])
        requests_after = settled_requests(kube)
        writes = controller_writes(requests_after, requests_before)
        reconcile = reconcile_metrics() if operator else {}
        rss.stop.set()
        cpu = rss.proc.cpu_times()
        p50, p95 = statistics.median(ours), percentile(ours, 0.95)
        return {
            "side": "floor (instant controller in the benchmark)" if floor else "operator",
            "workspaces": count,
            "crd_cel_rules": cel,
            "measured": "apply -> data Job created (data-first: the training Job follows the data check)",
            "p50_s": round(p50, 3),
            "p95_s": round(p95, 3),
            "max_s": round(max(ours), 3),
            "all_s": round(all_s, 2),
            "apply_s": round(apply_s, 2),
            "reconciles": int(reconcile.get("count", 0)),
            "reconcile_mean_s": round(reconcile.get("sum", 0) / max(reconcile.get("count", 1), 1), 3),
            "writes_per_workspace": round(sum(writes.values()) / count, 2),
            "writes": writes,
            "api_ms_per_write": write_latencies(requests_after, requests_before, writes),
            "rss_mib": round(rss.peak / 2**20, 1),
            "cpu_s": round(cpu.user + cpu.system, 2),
            "window_cpu_s": {
                name: round(cpu_after[name] - cpu_before.get(name, 0), 2)
                for name in cpu_after
                if name in ("operator", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
            },
            "baseline_direct_job_p50_s": round(statistics.median(base), 3),
            "baseline_direct_job_p95_s": round(percentile(base, 0.95), 3),
            "p95_ratio_vs_direct": round(p95 / max(percentile(base, 0.95), 1e-3), 1),
            "goals_met": p50 < 1 and p95 < 2 and all_s < 60 and rss.peak / 2**20 < 300,
            "busy_loops": busy,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        }
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all(operator, loops, state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--without-cel", action="store_true", help="apply the CRD without its CEL rules")
    parser.add_argument("--busy", type=int, default=0, help="CPU-spinning processes beside the run")
    parser.add_argument("--crd", type=Path, help="install this CRD (JSON) instead of the tree's")
    parser.add_argument(
        "--floor", action="store_true", help="no operator: the benchmark makes its planned writes at once"
    )
    args = parser.parse_args()
    crd = json.loads(args.crd.read_text()) if args.crd else None
    print(json.dumps(run(args.count, cel=not args.without_cel, busy=args.busy, crd=crd, floor=args.floor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
