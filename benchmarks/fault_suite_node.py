"""Fault suite (issue 15, the part that needs the node): faults injected while the tiny preset really
trains, on the local cluster with its node, the chart's operator and the authenticated registry.

    .venv/bin/python benchmarks/fault_suite.py --node            # 20 operator SIGKILLs, ... (~16 min)
    .venv/bin/python benchmarks/fault_suite.py --node --quick    # one or a few per fault (~6 min; the test)
    .venv/bin/python benchmarks/fault_suite_node.py [--quick] [--seed N] [--steps N]   # the same

hack/local_stack.LocalStack starts the cluster (control plane, kubelet, containerd, ...), the Workspace
CRD, the registry (Debian's docker-registry with htpasswd) and the data server; the operator is the
chart's Deployment (``install_operator``, progressIntervalSeconds=1); Karpenter's NodeClaim CRD is
installed so that a NodeClaim would be stored and counted. Each Workspace is
examples/tuning/tiny-llama-demo.yaml (hosts templated as hack/demo.py does, renamed per Workspace,
``--steps`` training steps, default 30: about a minute from POST to Succeeded), pushing to
``<registry>/adapters/<ws>:v1`` with a push Secret whose password is ``SECRET-TOKEN-1`` (a user ``fault``
added to the registry's htpasswd). Each fault runs in a namespace of its own.

A Workspace **ended right** when it is Succeeded, its status' adapter digest is the manifest digest the
registry holds for its tag, exactly one training Job uid was ever seen under its name (Jobs are listed
every 0.5 s by a poller that survives API server restarts; ``duplicates`` counts extra uids), and the
container logs kubelet keeps on the node show one train container that trained to the end
(``trained``) and one push container that pushed (``pushed``); ``pods`` counts the Job's pods and
``reused`` the train containers of a retried pod that found the adapter complete on the results claim
and did not train again.

operator_sigkill_training: waves of Workspaces (3 at once) go through data check, fetch, training, push
    and success while the operator gets SIGKILL at random moments (2-10 s apart, each once the operator
    is back: ready and restarted), until 20 kills. The kill is a real SIGKILL of the container's main
    process (python -m tuning_controller.operator, found on this host by the container id in its
    cgroup): no shutdown code runs, as in an OOM kill or a node crash; kubelet restarts the container in
    place. When the container has already been restarted once (kubelet's crash-loop back-off would hold
    the next restart for 20 s or more) the pod is also deleted with grace 0 right after the SIGKILL, so
    the ReplicaSet's next pod takes over without the back-off (``restarted_by``). ``phases_at_kill``
    counts the Workspaces' phases at each kill.
api_server_restart_training / etcd_restart_training: Workspaces applied; once one is Training,
    kube-apiserver (or etcd) is stopped (SIGTERM, SIGKILL after 5 s) and started again with the same
    command line (its PID file updated, so that ``control-plane.sh stop`` ends it). ``rounds`` tells
    the phases at the restart, the seconds until /readyz answered and whether the operator restarted.
registry_down_mid_push: once the Workspace's push container runs (or status.tuning.phase is Pushing),
    the registry is stopped for 30 s and started again on the same port and storage. Ended right: as
    above (a retried pod must reuse the adapter, not retrain), or Failed with a message naming the
    registry, after which the Workspace is deleted and applied again (what a user would do) and must
    then end right.
registry_500: the Workspaces push through a fault proxy (a threaded HTTP proxy on the node's address in
    front of the registry) that answers 500 to the first ``FAILS_PER_PUSH`` requests for each repository,
    then forwards everything. ``injected`` counts the 500s answered.
finished_job_deleted / configmap_deleted_after_training: Succeeded Workspaces of the other faults; half
    get their training Job deleted (propagation Background: its pods go too), the others their training
    ConfigMap; then one 60 s wait. Ended right: still Succeeded with the same digest, the registry's, and
    no new Job under its name (no retraining loop).

``secrets_found`` counts ``SECRET-TOKEN`` and the base64 of the push Secret's ``user:password`` in every
Workspace status, Event, ConfigMap, Job and pod (spec and status) of the suite's namespaces and the
operator's, in the operator's logs (saved before each kill and at the end) and in every container log
under the node's pod-logs folder (scanned before the deletion faults and at the end; the larger count
of each place is reported). ``nodeclaims_left``: NodeClaims in the cluster at the end (the
Workspaces select the local node by label: none is expected). ``all_right``: every fault injected and
every Workspace ended right, no duplicates, no NodeClaim, no secret found. Prints one JSON object; every
part of the stack is stopped by PID at the end (KEEP_STATE=1 keeps the state folder with the logs).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fault_suite import answers, running, until  # noqa: E402
from hack.cluster import create_namespace, pod_log  # noqa: E402
from hack.demo import DATA_FILE, TUNING_EXAMPLE, templated, with_steps  # noqa: E402
from hack.local_stack import LocalStack  # noqa: E402
from hack.operators import ChartOperator  # noqa: E402
from hack.processes import stop_process  # noqa: E402
from hack.servers import docker_config_json  # noqa: E402
from presets.tiny_task import split_rows, write_parquet  # noqa: E402
from tuning_controller.kube import Kube, KubeError  # noqa: E402
from tuning_controller.render.nodeclaim import NODECLAIM_API_VERSION  # noqa: E402

WS_API = "kaito.sh/v1beta1"
SECRET = "SECRET-TOKEN"
PUSH_USER, PUSH_PASSWORD = "fault", f"{SECRET}-1"
PUSH_SECRET = "push"
OPERATOR_NS = "kaito-tune"
FAILS_PER_PUSH = 3
REGISTRY_DOWN_S = 30
NO_NEW_JOB_S = 60
RUN_TIMEOUT_S = 600  # one Workspace from POST to Succeeded/Failed, under faults
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- a registry proxy that fails the first requests of each push ------------------------------------


class FaultProxy:
    """A threaded HTTP proxy on ``bind`` forwarding to ``upstream`` (host:port); the first ``fails``
    requests for each repository (``/v2/<repo>/...``) are answered 500 without being forwarded."""

    def __init__(self, bind: str, upstream: str, fails: int):
        self.upstream, self.fails = upstream, fails
        self.seen: Counter = Counter()
        self.failed: Counter = Counter()
        self.forwarded: Counter = Counter()
        self.manifest_puts: Counter = Counter()
        self.lock = threading.Lock()
        handler = type("Handler", (ProxyHandler,), {"proxy": self})
        self.server = QuietServer((bind, 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietServer(http.server.ThreadingHTTPServer):
    """Clients closing kept-alive connections are not errors worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """FaultProxy's requests (``proxy`` set on a subclass per proxy)."""

    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def log_message(self, *args: object) -> None:
        pass

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def repository(self) -> tuple[str, list[str]]:
        parts = self.path.split("?")[0].split("/")
        for marker in ("blobs", "manifests", "tags"):
            if marker in parts:
                return "/".join(parts[2 : parts.index(marker)]), parts
        return "", parts

    def handle_any(self) -> None:
        data = self.body()
        repo, parts = self.repository()
        with self.proxy.lock:
            self.proxy.seen[repo] += 1
            fail = bool(repo) and self.proxy.seen[repo] <= self.proxy.fails
            if fail:
                self.proxy.failed[repo] += 1
            else:
                self.proxy.forwarded[repo] += 1
                if self.command == "PUT" and "manifests" in parts:
                    self.proxy.manifest_puts[repo] += 1
        if fail:
            payload = b'{"errors":[{"code":"UNKNOWN","message":"injected 500"}]}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:
            self.forward(data)

    def forward(self, data: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        if data or self.command in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = str(len(data))
        host, port = self.proxy.upstream.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            conn.request(self.command, self.path, body=data or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any


# ---- the suite --------------------------------------------------------------------------------------


class JobPoller(threading.Thread):
    """Every uid seen under each Job name in the namespaces (listed every 0.5 s; errors while the API
    server restarts are skipped)."""

    def __init__(self, kube: Kube):
        super().__init__(daemon=True)
        self.kube = kube
        self.namespaces: set[str] = set()
        self.uids: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for ns in list(self.namespaces):
                with contextlib.suppress(Exception):
                    for job in self.kube.list("batch/v1", "Job", ns):
                        self.uids[(ns, job["metadata"]["name"])].add(job["metadata"]["uid"])
            time.sleep(0.5)


def tuning_of(ws: dict | None) -> dict:
    return ((ws or {}).get("status") or {}).get("tuning") or {}


class Suite:
    def __init__(self, stack: LocalStack, rng: random.Random, steps: int, logs: Path):
        self.stack, self.rng, self.steps, self.logs = stack, rng, steps, logs
        self.kube = Kube(stack.api, field_manager="fault-suite")
        self.registry = stack.registry
        self.operator: ChartOperator
        self.proxy: FaultProxy
        self.jobs = JobPoller(self.kube)
        self.namespaces: list[str] = []
        self.restarted: list[subprocess.Popen] = []
        self.saved_logs = 0

    # -- setup --

    def setup(self) -> None:
        htpasswd = self.registry.workdir / "htpasswd"
        line = subprocess.run(
            ["htpasswd", "-Bbn", PUSH_USER, PUSH_PASSWORD], check=True, capture_output=True, text=True
        ).stdout
        htpasswd.write_text(htpasswd.read_text() + line.strip() + "\n")
        self.registry.stop()
        self.registry.start()  # reads the htpasswd with the new user
        self.proxy = FaultProxy(self.stack.node.ip, self.registry.host, FAILS_PER_PUSH)
        # Karpenter's NodeClaim CRD, so that a NodeClaim the operator made would exist and be counted.
        self.kube.apply(yaml.safe_load((ROOT / "tests" / "controller" / "nodeclaim-crd.yaml").read_text()))
        until(lambda: self.nodeclaims() is not None, 60, "NodeClaims served")
        node = self.stack.node
        self.operator = self.stack.install_operator(
            progressIntervalSeconds=1,
            insecureRegistries=[self.registry.host, self.proxy.host, node.image_registry],
        )
        train, _ = split_rows()
        write_parquet(self.stack.data.root / DATA_FILE, train)
        self.jobs.start()

    def namespace(self, name: str) -> str:
        create_namespace(self.stack.api, name)
        config = json.loads(docker_config_json(self.registry.host, PUSH_USER, PUSH_PASSWORD))
        config["auths"][self.proxy.host] = config["auths"][self.registry.host]
        self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": PUSH_SECRET, "namespace": name},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
            }
        )
        self.namespaces.append(name)
        self.jobs.namespaces.add(name)
        return name

    def documents(self, ns: str, name: str, registry_host: str) -> list[dict]:
        data_host = self.stack.data.url.removeprefix("http://")
        docs = with_steps(templated(TUNING_EXAMPLE, data_host, registry_host), self.steps)
        for doc in docs:
            doc["metadata"]["namespace"] = ns
            if doc["kind"] == "ConfigMap":
                doc["metadata"]["name"] = f"{name}-config"
            else:
                doc["metadata"]["name"] = name
                doc["tuning"]["config"] = f"{name}-config"
                doc["tuning"]["output"] = {
                    "image": f"{registry_host}/adapters/{name}:v1",
                    "imagePushSecret": PUSH_SECRET,
                }
        return docs

    def apply(self, ns: str, name: str, registry_host: str = "", retry_s: float = 120) -> None:
        for doc in self.documents(ns, name, registry_host or self.registry.host):
            deadline = time.monotonic() + retry_s
            while True:
                try:
                    self.kube.create(doc)
                    break
                except KubeError as err:
                    if err.already_exists:
                        break
                    if (err.status < 500 and err.status != 429) or time.monotonic() > deadline:
                        raise
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.5)

    def workspace(self, ns: str, name: str) -> dict | None:
        return self.kube.get(WS_API, "Workspace", ns, name)

    def finished(self, ns: str, names: list[str], timeout: float = RUN_TIMEOUT_S) -> dict[str, dict]:
        def done() -> bool:
            return all(
                tuning_of(self.workspace(ns, n)).get("phase") in ("Succeeded", "Failed") for n in names
            )

        until(done, timeout, f"Succeeded/Failed in {ns}", interval=1)
        return {n: self.workspace(ns, n) or {} for n in names}

    def wait_phase(self, ns: str, names: list[str], phases: tuple[str, ...], timeout: float) -> str | None:
        def reached() -> str | None:
            for n in names:
                if tuning_of(self.workspace(ns, n)).get("phase") in phases:
                    return n
            return None

        return until(reached, timeout, f"a Workspace in {ns} at {phases}", interval=0.3)

    def registry_digest(self, name: str) -> str | None:
        try:
            resp = requests.get(
                f"http://{self.registry.host}/v2/adapters/{name}/manifests/v1",
                headers={"Accept": MANIFEST_TYPES},
                auth=(PUSH_USER, PUSH_PASSWORD),
                timeout=10,
            )
        except requests.RequestException:
            return None
        return resp.headers.get("Docker-Content-Digest") if resp.ok else None

    def judge(self, ns: str, name: str, ws: dict | None = None, failed_ok: str = "") -> dict:
        """Whether the Workspace ended right (see the module docstring); ``failed_ok``: a Failed
        Workspace whose message contains it (case-insensitive) counts as right too."""
        ws = ws if ws is not None else self.workspace(ns, name)
        tuning = tuning_of(ws)
        uids = len(self.jobs.uids.get((ns, name), ()))
        pushed = (tuning.get("adapter") or {}).get("digest")
        held = self.registry_digest(name)
        phase = tuning.get("phase")
        message = " ".join(
            str(c.get("message", "")) for c in (ws or {}).get("status", {}).get("conditions") or []
        )
        runs = self.pod_runs(ns, name)
        once = runs["trained"] == 1 and runs["pushed"] == (1 if phase == "Succeeded" else 0)
        right = phase == "Succeeded" and bool(pushed) and pushed == held and uids == 1 and once
        if phase == "Failed" and failed_ok and failed_ok.lower() in message.lower():
            right = uids == 1 and runs["trained"] == 1
        out = {"workspace": name, "right": right, "phase": phase, "job_uids": uids, **runs}
        if not right or phase != "Succeeded":
            out |= {"status_digest": pushed, "registry_digest": held, "message": message[:400]}
        return out

    def pod_runs(self, ns: str, name: str) -> dict[str, int]:
        """From the container logs kubelet keeps on the node (``<ns>_<pod>_<uid>/<container>/<n>.log``):
        the training Job's pods, how many train containers trained to the end (``"event": "done"``),
        how many found the adapter already complete on the results claim and did not train again
        (``reused``), and how many push containers pushed (``pushed <ref>@sha256:...``)."""
        root = self.stack.control_plane.state_dir / "node" / "pod-logs"
        runs = {"pods": 0, "trained": 0, "reused": 0, "pushed": 0}
        for pod_dir in root.glob(f"{ns}_{name}-*_*"):
            pod = pod_dir.name.split("_")[1]
            if pod.startswith(f"{name}-data-") or pod.count("-") != name.count("-") + 1:
                continue
            runs["pods"] += 1
            for path in pod_dir.glob("train/*.log"):
                text = path.read_text(errors="replace")
                runs["trained"] += '"event": "done"' in text
                runs["reused"] += "already holds a complete adapter" in text
            for path in pod_dir.glob("push/*.log"):
                runs["pushed"] += f"/adapters/{name}@sha256:" in path.read_text(errors="replace")
        return runs

    @staticmethod
    def summary(judged: list[dict], injected: int, **extra: Any) -> dict:
        wrong = [j for j in judged if not j["right"]]
        return {
            "injected": injected,
            "workspaces": len(judged),
            "ended_right": len(judged) - len(wrong),
            "duplicates": sum(max(0, j["job_uids"] - 1) for j in judged),
            **{  # summed over the Workspaces (see pod_runs)
                key: sum(j[key] for j in judged)
                for key in ("pods", "trained", "reused", "pushed")
                if all(key in j for j in judged)
            },
            **extra,
            "not_right": wrong[:10],
        }

    # -- the operator --

    def operator_pod(self) -> dict | None:
        try:
            return self.operator.pod()
        except Exception:
            return None

    def save_operator_log(self) -> None:
        pod = self.operator_pod()
        if pod is None:
            return
        with contextlib.suppress(Exception):
            text = pod_log(self.stack.api, OPERATOR_NS, pod["metadata"]["name"], "controller")
            (self.logs / f"operator-{self.saved_logs:03d}.log").write_text(text)
            self.saved_logs += 1

    def operator_ready(self) -> bool:
        pod = self.operator_pod()
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        return bool(statuses) and all(s.get("ready") for s in statuses)

    def operator_main_pid(self, pod: dict) -> int | None:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        cid = next((s.get("containerID", "") for s in statuses if s["name"] == "controller"), "")
        cid = cid.split("://")[-1]
        if not cid:
            return None
        found = []
        for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
            try:
                if "tuning_controller.operator" not in " ".join(proc.info["cmdline"] or []):
                    continue
                if cid in Path(f"/proc/{proc.info['pid']}/cgroup").read_text():
                    found.append(proc.info)
            except (OSError, psutil.Error):
                continue
        pids = {p["pid"] for p in found}
        roots = [p["pid"] for p in found if p["ppid"] not in pids]
        return min(roots) if roots else None

    def kill_operator(self) -> str:
        """SIGKILL the operator container's main process; returns how it came back."""
        self.save_operator_log()
        pod = self.operator_pod()
        assert pod is not None, "no operator pod"
        pid = self.operator_main_pid(pod)
        assert pid is not None, "the operator's main process was not found"
        os.kill(pid, signal.SIGKILL)
        until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10, "kill")
        restarts = max(
            (s.get("restartCount", 0) for s in (pod.get("status") or {}).get("containerStatuses") or []),
            default=0,
        )
        uid = pod["metadata"]["uid"]
        how = "kubelet restart"
        if restarts >= 1:  # this kill makes it >= 2: kubelet's back-off would be 20 s or more
            time.sleep(1)
            self.save_operator_log()
            self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{OPERATOR_NS}/pods/{pod['metadata']['name']}",
                {"gracePeriodSeconds": 0},
            )
            how = "new pod"

        def back() -> bool:
            now = self.operator_pod()
            if now is None:
                return False
            count = max(
                (s.get("restartCount", 0) for s in (now.get("status") or {}).get("containerStatuses") or []),
                default=0,
            )
            return (now["metadata"]["uid"] != uid or count > restarts) and self.operator_ready()

        if not until(back, 120, "the operator ready again", interval=0.5):
            raise RuntimeError("the operator did not come back within 120 s")
        return how

    # -- control-plane processes --

    def restart_process(self, name: str, ready: Callable[[], bool]) -> float:
        """Stop ``name`` of the control plane (SIGTERM, SIGKILL after 5 s) and start it again with the
        same command line; returns the seconds until ``ready``."""
        started = time.monotonic()
        state = self.stack.control_plane.state_dir
        pid_file = state / "pids" / f"{name}.pid"
        old = psutil.Process(int(pid_file.read_text()))
        argv, cwd = old.cmdline(), old.cwd()
        old.terminate()
        if not until(lambda: not running(old), 5, f"the old {name} to exit", interval=0.1):
            old.kill()
            until(lambda: not running(old), 30, f"the old {name} to be killed", interval=0.1)
        with open(state / "logs" / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.restarted.append(proc)
        threading.Thread(target=proc.wait, daemon=True).start()
        pid_file.write_text(f"{proc.pid}\n")
        until(ready, 180, f"{name} ready after the restart", interval=0.3)
        return time.monotonic() - started

    def api_ready(self) -> bool:
        return answers(self.kube, "/readyz")

    # -- faults --

    def operator_sigkill_training(self, kills: int, per_wave: int) -> dict:
        ns = self.namespace("sigkill")
        names: list[str] = []
        phases: Counter = Counter()
        restarts: Counter = Counter()
        delays = []
        done = 0
        wave = 0
        while done < kills:
            batch = [f"k{wave}-{i}" for i in range(per_wave)]
            wave += 1
            for name in batch:
                self.apply(ns, name)
            names += batch
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while done < kills and time.monotonic() < deadline:
                delays.append(round(self.rng.uniform(2, 10), 1))
                time.sleep(delays[-1])
                for name in batch:
                    phases[tuning_of(self.workspace(ns, name)).get("phase") or "none"] += 1
                restarts[self.kill_operator()] += 1
                done += 1
                log(f"sigkill {done}/{kills}")
                if all(
                    tuning_of(self.workspace(ns, n)).get("phase") in ("Succeeded", "Failed") for n in batch
                ):
                    break
        final = self.finished(ns, names)
        time.sleep(3)
        judged = [self.judge(ns, n, final[n]) for n in names]
        return self.summary(
            judged, done, kill_delays_s=delays, phases_at_kill=dict(phases), restarted_by=dict(restarts)
        )

    def operator_restarts(self) -> tuple[str, int]:
        pod = self.operator_pod() or {"metadata": {"name": "-"}}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return pod["metadata"]["name"], sum(s.get("restartCount", 0) for s in statuses)

    def control_plane_restart(
        self, ns_name: str, process: str, injections: int, per_injection: int, ready: Callable[[], bool]
    ) -> dict:
        """``injections`` rounds: ``per_injection`` Workspaces applied, ``process`` restarted once one of
        them is Training, then all of them followed to the end."""
        ns = self.namespace(ns_name)
        judged, injected, rounds = [], 0, []
        for r in range(injections):
            names = [f"{ns_name[:1]}{r}-{i}" for i in range(per_injection)]
            for name in names:
                self.apply(ns, name)
            at = self.wait_phase(ns, names, ("Training",), RUN_TIMEOUT_S)
            phases = Counter(tuning_of(self.workspace(ns, n)).get("phase") or "none" for n in names)
            operator_before = self.operator_restarts()
            down_s = self.restart_process(process, ready) if at else 0.0
            injected += bool(at)
            final = self.finished(ns, names)
            judged += [self.judge(ns, n, final[n]) for n in names]
            rounds.append(
                {
                    "phases_at_restart": dict(phases),
                    "down_s": round(down_s, 1),
                    "operator_restarted": self.operator_restarts() != operator_before,
                }
            )
        return self.summary(judged, injected, rounds=rounds)

    def push_running(self, ns: str, names: list[str]) -> str | None:
        for name in names:
            if tuning_of(self.workspace(ns, name)).get("phase") == "Pushing":
                return name
        for pod in self.kube.list("v1", "Pod", ns):
            job = (pod["metadata"].get("labels") or {}).get("job-name")
            for s in (pod.get("status") or {}).get("initContainerStatuses") or []:
                if job in names and s["name"] == "push" and "running" in (s.get("state") or {}):
                    return job
        return None

    def registry_down_mid_push(self, injections: int) -> dict:
        ns = self.namespace("registry-down")
        judged, injected, details = [], 0, []
        for i in range(injections):
            name = f"d{i}"
            self.apply(ns, name)
            at = until(lambda n=name: self.push_running(ns, [n]), RUN_TIMEOUT_S, "the push", interval=0.1)
            trigger = tuning_of(self.workspace(ns, name)).get("phase")
            if not at:
                judged.append(self.judge(ns, name))
                continue
            self.registry.stop()
            injected += 1
            time.sleep(REGISTRY_DOWN_S)
            self.registry.start()
            ws = self.finished(ns, [name])[name]
            first = self.judge(ns, name, ws, failed_ok="registry")
            detail = {
                "workspace": name,
                "stopped_at_phase": trigger,
                "first_outcome": tuning_of(ws).get("phase"),
                **self.pod_runs(ns, name),
            }
            if first["right"] and first["phase"] == "Failed":
                detail["failed_message"] = first["message"]
                self.kube.delete(WS_API, "Workspace", ns, name)
                until(lambda n=name: self.workspace(ns, n) is None, 120, "the failed Workspace gone")
                until(lambda n=name: not self.kube.get("batch/v1", "Job", ns, n), 120, "its Job gone")
                self.jobs.uids.pop((ns, name), None)
                self.apply(ns, name)
                ws = self.finished(ns, [name])[name]
                first = self.judge(ns, name, ws)
                detail["after_reapply"] = first["phase"]
            details.append(detail)
            judged.append(first)
        return self.summary(judged, injected, down_s=REGISTRY_DOWN_S, outcomes=details)

    def registry_500(self, count: int) -> dict:
        ns = self.namespace("registry-500")
        names = [f"f{i}" for i in range(count)]
        for name in names:
            self.apply(ns, name, registry_host=self.proxy.host)
        final = self.finished(ns, names)
        judged = [self.judge(ns, n, final[n]) for n in names]
        repos = [f"adapters/{n}" for n in names]
        return self.summary(
            judged,
            sum(self.proxy.failed[r] for r in repos),
            answered_500={r: self.proxy.failed[r] for r in repos},
            forwarded={r: self.proxy.forwarded[r] for r in repos},
            manifest_puts={r: self.proxy.manifest_puts[r] for r in repos},
        )

    def deleted_after_success(self, jobs: list[tuple[str, str]], configmaps: list[tuple[str, str]]) -> dict:
        """The training Jobs of the Succeeded Workspaces in ``jobs`` deleted (propagation Background: their
        pods go too), the training ConfigMaps of those in ``configmaps``; then 60 s (one wait for both):
        each still Succeeded with the same digest, the registry's, and no new Job under its name."""
        before, uids_before = {}, {}
        for what, sources in (("job", jobs), ("configmap", configmaps)):
            for ns, name in sources:
                ws = self.workspace(ns, name)
                before[(ns, name)] = (tuning_of(ws).get("adapter") or {}).get("digest")
                uids_before[(ns, name)] = set(self.jobs.uids.get((ns, name), ()))
                if what == "job":
                    path = f"/apis/batch/v1/namespaces/{ns}/jobs/{name}"
                    self.kube.request("DELETE", path, {"propagationPolicy": "Background"})
                else:
                    self.kube.delete("v1", "ConfigMap", ns, f"{name}-config")
        time.sleep(NO_NEW_JOB_S)
        out = {}
        for what, sources in (("job", jobs), ("configmap", configmaps)):
            judged = []
            for ns, name in sources:
                ws = self.workspace(ns, name)
                tuning = tuning_of(ws)
                digest = (tuning.get("adapter") or {}).get("digest")
                new_jobs = len(self.jobs.uids.get((ns, name), set()) - uids_before[(ns, name)])
                held = self.registry_digest(name)
                right = tuning.get("phase") == "Succeeded" and digest == before[(ns, name)] == held
                right = right and bool(digest) and new_jobs == 0
                job = self.kube.get("batch/v1", "Job", ns, name)
                judged.append(
                    {
                        "workspace": f"{ns}/{name}",
                        "right": right,
                        "phase": tuning.get("phase"),
                        "job_uids": 1 + new_jobs,
                        "new_jobs": new_jobs,
                        "job_exists": bool(job and not job["metadata"].get("deletionTimestamp")),
                        **(
                            {}
                            if right
                            else {"digest": digest, "before": before[(ns, name)], "registry": held}
                        ),
                    }
                )
            out[what] = self.summary(judged, len(sources), watched_s=NO_NEW_JOB_S)
        return out

    # -- secrets --

    def secrets_found(self) -> dict[str, int]:
        auth = base64.b64encode(f"{PUSH_USER}:{PUSH_PASSWORD}".encode()).decode()
        needles = (SECRET, auth)
        where: Counter = Counter()

        def count(key: str, text: str) -> None:
            where[key] += sum(text.count(n) for n in needles)

        kinds = (("batch/v1", "Job"), ("v1", "ConfigMap"), ("v1", "Pod"), ("v1", "Event"))
        for ns in [*self.namespaces, OPERATOR_NS]:
            for ws in self.kube.list(WS_API, "Workspace", ns):
                count("workspace status", json.dumps(ws.get("status")))
            for api_version, kind in kinds:
                count(kind, json.dumps(self.kube.list(api_version, kind, ns)))
        count("Event (all namespaces)", json.dumps(self.kube.list("v1", "Event")))
        self.save_operator_log()
        for path in self.logs.glob("operator-*.log"):
            count("operator log", path.read_text(errors="replace"))
        pod_logs = self.stack.control_plane.state_dir / "node" / "pod-logs"
        for path in pod_logs.rglob("*"):
            if path.is_file():
                count("container logs (node)", path.read_text(errors="replace"))
        return {k: v for k, v in where.items() if v}

    def nodeclaims(self) -> int | None:
        try:
            return len(self.kube.list(NODECLAIM_API_VERSION, "NodeClaim"))
        except Exception:
            return None

    def stop(self) -> None:
        self.jobs.stop.set()
        with contextlib.suppress(Exception):
            self.proxy.stop()


SIZES = {  # sigkills, Workspaces per SIGKILL wave, API server / etcd restarts, Workspaces per restart,
    # registry-down injections, registry-500 Workspaces
    "quick": (3, 2, 1, 1, 1, 1),
    "full": (20, 3, 2, 2, 2, 3),
}


def fault_right(fault: dict) -> bool:
    return (
        fault["ended_right"] == fault["workspaces"] and not fault.get("duplicates") and fault["injected"] > 0
    )


def run(quick: bool, seed: int, steps: int) -> dict:
    started = time.monotonic()
    rng = random.Random(seed)
    kills, per_wave, n_restart, n_per_restart, n_down, n_500 = SIZES["quick" if quick else "full"]
    state = Path(tempfile.mkdtemp(prefix="fault-suite-node-"))
    logs = state / "saved-logs"
    logs.mkdir()
    faults: dict[str, dict] = {}
    timings: dict[str, float] = {}
    try:
        with LocalStack(state / "stack", max_seconds=3600, log=log) as stack:
            suite = Suite(stack, rng, steps, logs)
            try:
                suite.setup()
                setup_s = round(time.monotonic() - started, 1)
                steps_ = (
                    ("operator_sigkill_training", lambda: suite.operator_sigkill_training(kills, per_wave)),
                    (
                        "api_server_restart_training",
                        lambda: suite.control_plane_restart(
                            "apiserver", "kube-apiserver", n_restart, n_per_restart, suite.api_ready
                        ),
                    ),
                    (
                        "etcd_restart_training",
                        lambda: suite.control_plane_restart(
                            "etcd", "etcd", n_restart, n_per_restart, suite.api_ready
                        ),
                    ),
                    ("registry_down_mid_push", lambda: suite.registry_down_mid_push(n_down)),
                    ("registry_500", lambda: suite.registry_500(n_500)),
                )
                for name, step in steps_:
                    log(f"fault {name}")
                    t0 = time.monotonic()
                    try:
                        faults[name] = step()
                    except Exception as err:  # one fault's crash must not hide the others
                        faults[name] = {"injected": 0, "workspaces": 0, "ended_right": 0, "error": repr(err)}
                    timings[name] = round(time.monotonic() - t0, 1)
                    log(f"  {json.dumps(faults[name])[:600]}")
                succeeded = [
                    (ns, w["metadata"]["name"])
                    for ns in ("apiserver", "etcd", "registry-500", "sigkill")
                    if ns in suite.namespaces
                    for w in suite.kube.list(WS_API, "Workspace", ns)
                    if tuning_of(w).get("phase") == "Succeeded"
                ]
                half = max(1, len(succeeded) // 2)
                early = suite.secrets_found()  # before the deleted Jobs' pods take their logs along
                log("faults finished_job_deleted and configmap_deleted_after_training (one 60 s wait)")
                t0 = time.monotonic()
                try:
                    both = suite.deleted_after_success(succeeded[:half], succeeded[half:] or succeeded[:1])
                    faults["finished_job_deleted"] = both["job"]
                    faults["configmap_deleted_after_training"] = both["configmap"]
                except Exception as err:
                    for name in ("finished_job_deleted", "configmap_deleted_after_training"):
                        faults[name] = {"injected": 0, "workspaces": 0, "ended_right": 0, "error": repr(err)}
                timings["finished_job_and_configmap_deleted"] = round(time.monotonic() - t0, 1)
                log(f"  {json.dumps(faults['finished_job_deleted'])[:600]}")
                log(f"  {json.dumps(faults['configmap_deleted_after_training'])[:600]}")
                late = suite.secrets_found()
                secrets = {k: max(early.get(k, 0), late.get(k, 0)) for k in {*early, *late}}
                claims = suite.nodeclaims()
            finally:
                suite.stop()
        for proc in suite.restarted:  # control-plane.sh stop ended them (PID files); if not, here
            stop_process(proc)
        return {
            "faults": faults,
            "fault_seconds": timings,
            "setup_seconds": setup_s,
            "nodeclaims_left": claims,
            "secrets_found": sum(secrets.values()),
            "secrets_where": secrets,
            "all_right": all(fault_right(f) for f in faults.values()) and not claims and not secrets,
            "quick": quick,
            "steps": steps,
            "seed": seed,
            "seconds": round(time.monotonic() - started, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        }
    finally:
        if not os.environ.get("KEEP_STATE"):
            shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few injections per fault (for the test)")
    parser.add_argument("--seed", type=int, default=15, help="seed of the random moments")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each Workspace")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.seed, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
