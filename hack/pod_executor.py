"""Pod executor: plays scheduler and kubelet for the local control plane (a test/demo helper).

No container runtime runs here, so this process registers a Node (with `nvidia.com/gpu` capacity),
binds pending pods that fit a Ready node, and runs the pods bound to its node as local processes:
init containers one by one, then the containers concurrently, each in a private mount namespace in
which the pod's volumes are bind-mounted at their mountPath. The "image" is the repository's Python
environment (.venv/bin first on PATH, PYTHONPATH=<repo root>). Pod status goes back through the API's
status subresource, so the Job controller, owner references and watches work as in a real cluster.

    .venv/bin/python hack/pod_executor.py --kubeconfig STATE/kubeconfig --state-dir /tmp/executor \\
        --label apps=phi-3 --gpus 1 --max-seconds 3600

State dir: pods/<uid>/ (volumes, termination messages), pvc/<ns>/<claim>/ (survives pod retries),
logs/<ns>/<pod>/<container>.log (see pod_runtime.log_path). Needs root (mount namespaces).

Also done: readiness probes (httpGet, tcpSocket, exec), restartPolicy OnFailure/Always in place with
back-off, native sidecars, graceful deletion. Not done, by design of a test helper: liveness and
startup probes, image entrypoints (a container needs `command` or `args`), resource limits, networking
(every pod is 127.0.0.1, so two pods cannot listen on one port), image volumes. Mount points missing on
the host (e.g. /mnt/data, /dev/termination-log) are created there empty, as placeholders for the
private bind mounts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pod_runtime as rt
import requests
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger("pod-executor")
REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGED_BY = "kaito-tune-pod-executor"
HEARTBEAT_S = 10
NODE_STALE_S = 40
RELIST_S = 5
RESTART_BACKOFF_S = (1, 2, 4, 8)
# Mounted read-only whatever the volumeMount says, as the kubelet does.
READ_ONLY_VOLUMES = {"configMap", "secret", "downwardAPI", "projected"}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status


class Kube:
    """Just the REST calls a kubelet and scheduler make, on plain dicts (the shapes the server sends)."""

    def __init__(self, kubeconfig: str):
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.base = cfg.host.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # CA bundles or proxies from the environment must not apply here
        self.session.verify = cfg.ssl_ca_cert or True
        if cfg.cert_file:
            self.session.cert = (cfg.cert_file, cfg.key_file)
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            self.session.headers["Authorization"] = token if " " in token else f"Bearer {token}"

    def call(self, method: str, path: str, body=None, content_type="application/json", **params):
        resp = self.session.request(
            method,
            self.base + path,
            params=params or None,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            timeout=30,
        )
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, resp.text)
        return resp.json() if resp.content else {}

    def get(self, path: str, **params) -> dict | None:
        try:
            return self.call("GET", path, **params)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def merge_patch(self, path: str, body: Mapping) -> dict:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")

    def watch(self, path: str, resource_version: str, seconds: int) -> Iterator[tuple[str, dict]]:
        params = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": str(seconds)}
        params["allowWatchBookmarks"] = "false"
        with self.session.get(self.base + path, params=params, stream=True, timeout=seconds + 10) as resp:
            if resp.status_code >= 300:
                raise ApiError(resp.status_code, resp.text)
            for line in resp.iter_lines():
                if line:
                    event = json.loads(line)
                    yield event["type"], event["object"]


def pod_path(pod: Mapping, sub: str = "") -> str:
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}{sub}"


class ContainerRun:
    """One container of one pod: its process (re)starts and its status entry."""

    def __init__(self, pod_run: PodRun, spec: Mapping, init: bool):
        self.pod_run = pod_run
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.sidecar = init and spec.get("restartPolicy") == "Always"
        self.halt = threading.Event()
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        waiting = "PodInitializing" if pod_run.init_runs_expected and not init else "ContainerCreating"
        self.status: dict = {
            "name": self.name,
            "image": spec.get("image", ""),
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {"waiting": {"reason": waiting}},
        }

    def stopped(self) -> bool:
        return self.halt.is_set() or self.pod_run.stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait, waking early on stop; True when stopped."""
        end = time.monotonic() + seconds
        while not self.stopped() and time.monotonic() < end:
            time.sleep(0.2)
        return self.stopped()

    def set_state(self, state: dict, **extra) -> None:
        with self.pod_run.lock:
            self.status["state"] = state
            self.status.update(extra)
        self.pod_run.push_status()

    def restart_allowed(self, exit_code: int) -> bool:
        """Sidecars always restart; other init containers only on failure unless the policy is Never."""
        policy = self.pod_run.pod["spec"].get("restartPolicy", "Always")
        if self.sidecar:
            return True
        if self.init and policy == "Always":
            policy = "OnFailure"
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def run(self) -> int | None:
        """Run until it will not be restarted; the last exit code, or None when stopped first."""
        while not self.stopped():
            code = self.run_once()
            if code is None or self.stopped():
                return code
            if not self.restart_allowed(code):
                return code
            if self.restarts >= self.pod_run.executor.max_restarts:
                log.warning("%s/%s: restart limit reached, left in back-off", self.pod_run.key, self.name)
                self.set_state(
                    {"waiting": {"reason": "CrashLoopBackOff", "message": "restart limit reached"}}
                )
                self.sleep(float("inf"))
                return None
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            with self.pod_run.lock:
                self.status["lastState"] = self.status["state"]
                self.restarts += 1
                self.status["restartCount"] = self.restarts
            self.set_state({"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay}s"}})
            if self.sleep(delay):
                return None
        return None

    def prepare(self) -> tuple[list[str], dict[str, str], list[tuple[str, str, bool]]] | None:
        """Resolve env, command and mounts, retrying while a referenced object is missing (as the kubelet)."""
        pod_run = self.pod_run
        while not self.stopped():
            try:
                env = rt.container_env(
                    pod_run.pod,
                    self.spec,
                    pod_run.base_env(),
                    pod_run.executor.lookup,
                    pod_run.executor.allocatable,
                )
                return rt.command_line(self.spec, env), env, pod_run.mounts(self.spec, env)
            except rt.ConfigError as err:
                self.set_state({"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}})
                self.sleep(1)
        return None

    def run_once(self) -> int | None:
        prepared = self.prepare()
        if prepared is None:
            return None
        argv, env, mounts = prepared
        pod_run = self.pod_run
        term_file = pod_run.dir / "termination" / f"{self.name}-{self.restarts}"
        term_file.parent.mkdir(parents=True, exist_ok=True)
        term_file.write_text("")
        log_file = rt.log_path(pod_run.executor.state_dir, pod_run.namespace, pod_run.name, self.name)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        term_path = self.spec.get("terminationMessagePath") or rt.DEFAULT_TERMINATION_PATH
        mounts = [*mounts, (str(term_file), term_path, False)]
        started = now()
        with open(log_file, "ab") as out:
            self.proc = subprocess.Popen(
                launcher(mounts, self.spec.get("workingDir") or "/") + argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cid = f"executor://{self.proc.pid}"
        probe = None if self.init and not self.sidecar else self.spec.get("readinessProbe")
        ready = probe is None and (not self.init or self.sidecar)
        self.set_state({"running": {"startedAt": started}}, ready=ready, started=True, containerID=cid)
        if probe is not None:
            threading.Thread(target=self.probe_loop, args=(probe, self.proc, env), daemon=True).start()
        while self.proc.poll() is None:
            if self.stopped():
                self.kill(self.pod_run.grace)
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the container ends with its main process
        code = self.proc.returncode
        exit_code = code if code >= 0 else 128 - code
        message = rt.termination_message(
            term_file.read_text(errors="replace"),
            tail(log_file, 64 * 1024),
            self.spec.get("terminationMessagePolicy"),
            exit_code,
        )
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now(),
            "containerID": cid,
        }
        if message:
            terminated["message"] = message
        self.set_state({"terminated": terminated}, ready=False, started=False)
        log.info("%s/%s exited %d", pod_run.key, self.name, exit_code)
        return exit_code

    def probe_loop(self, probe: Mapping, proc: subprocess.Popen, env: Mapping[str, str]) -> None:
        """readinessProbe: `ready` follows the probe with its period and thresholds while `proc` runs."""
        if self.sleep(probe.get("initialDelaySeconds", 0)):
            return
        streak, last = 0, None
        while proc.poll() is None:
            ok = self.probe_once(probe, proc, env)
            streak = streak + 1 if ok == last else 1
            last = ok
            needed = probe.get("successThreshold", 1) if ok else probe.get("failureThreshold", 3)
            if streak >= needed:
                with self.pod_run.lock:
                    if proc.poll() is None and "running" in self.status["state"]:
                        self.status["ready"] = ok
                self.pod_run.push_status()
            if self.sleep(probe.get("periodSeconds", 10)):
                return

    def probe_once(self, probe: Mapping, proc: subprocess.Popen, env: Mapping[str, str]) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = rt.probe_port(self.spec, get["port"])
                url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get.get('path', '/')}"
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                resp = self.pod_run.executor.probes.get(url, headers=headers, timeout=timeout, verify=False)
                return 200 <= resp.status_code < 400
            if "tcpSocket" in probe:
                port = rt.probe_port(self.spec, probe["tcpSocket"]["port"])
                with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                    return True
            if "exec" in probe:  # inside the container's mount namespace
                cmd = ["nsenter", "--target", str(proc.pid), "--mount", "--", *probe["exec"]["command"]]
                return (
                    subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False).returncode
                    == 0
                )
        except (OSError, requests.RequestException, subprocess.TimeoutExpired, rt.ConfigError):
            return False
        log.warning("%s/%s: readinessProbe %s not supported", self.pod_run.key, self.name, sorted(probe))
        return False

    def kill(self, grace: float) -> None:
        """SIGTERM to the container's process group, SIGKILL after the grace period."""
        self.halt.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tail(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode("utf-8", errors="replace")


def launcher(mounts: list[tuple[str, str, bool]], workdir: str) -> list[str]:
    """A private mount namespace in which each (source, target, read-only) is bind-mounted, then the
    command is exec'd in workdir. Missing mount points are created (empty) as a runtime would."""
    lines = ["set -e"]
    for src, dst, read_only in mounts:
        s, d = shlex.quote(src), shlex.quote(dst)
        if os.path.isdir(src):
            lines.append(f"/bin/mkdir -p {d}")
        else:
            lines.append(f"/bin/mkdir -p $(/usr/bin/dirname {d}); [ -e {d} ] || : > {d}")
        lines.append(f"/bin/mount --bind {s} {d}")
        if read_only:
            lines.append(f"/bin/mount -o remount,bind,ro {d}")
    lines.append(f"/bin/mkdir -p {shlex.quote(workdir)}; cd {shlex.quote(workdir)}")
    lines.append('exec "$@"')
    # pdeathsig: if the executor is killed outright, its containers die with it instead of lingering.
    return [
        *("setpriv", "--pdeathsig", "KILL"),
        *("unshare", "--mount", "--propagation", "private"),
        *("/bin/sh", "-c", "\n".join(lines), "container"),
    ]


class PodRun(threading.Thread):
    """A pod bound to this node: volumes, init containers, containers, status, deletion."""

    def __init__(self, executor: Executor, pod: dict):
        super().__init__(daemon=True, name=f"pod-{pod['metadata']['name']}")
        self.executor = executor
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.key = f"{self.namespace}/{self.name}"
        self.dir = executor.state_dir / "pods" / pod["metadata"]["uid"]
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.grace = 30.0
        self.delete_after = False
        self.volumes: dict[str, str] = {}
        self.read_only: set[str] = set()
        self.init_runs_expected = bool(pod["spec"].get("initContainers"))
        self.init_runs = [ContainerRun(self, c, True) for c in pod["spec"].get("initContainers") or []]
        self.runs = [ContainerRun(self, c, False) for c in pod["spec"]["containers"]]
        self.phase = "Pending"
        self.start_time = now()
        # type -> (status, reason, lastTransitionTime)
        self.conditions: dict[str, tuple[str, str, str]] = {
            "PodScheduled": ("True", "", self.start_time),
            "PodReadyToStartContainers": ("False", "", self.start_time),
            "Initialized": ("False" if self.init_runs else "True", "", self.start_time),
            "ContainersReady": ("False", "", self.start_time),
            "Ready": ("False", "", self.start_time),
        }
        self.pushed: str = ""

    def base_env(self) -> dict[str, str]:
        ex = self.executor
        env = {
            "PATH": f"{ex.repo_root / '.venv' / 'bin'}:{rt.SYSTEM_PATH}",
            "HOME": "/root",
            "HOSTNAME": self.name,
            "PYTHONPATH": str(ex.repo_root),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": ex.api_port,
            "KUBERNETES_SERVICE_PORT_HTTPS": ex.api_port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{ex.api_port}",
        }
        env.update({k: os.environ[k] for k in ex.pass_env if k in os.environ})
        return env

    def request_stop(self, grace: float, delete: bool) -> None:
        self.grace = grace
        self.delete_after = self.delete_after or delete
        self.stopping.set()

    # ---- status --------------------------------------------------------------------------------

    def status(self) -> dict:
        with self.lock:
            conditions = [
                {"type": t, "status": s, "lastTransitionTime": at, **({"reason": r} if r else {})}
                for t, (s, r, at) in self.conditions.items()
            ]
            return {
                "phase": self.phase,
                "conditions": conditions,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.start_time,
                "initContainerStatuses": [copy.deepcopy(r.status) for r in self.init_runs],
                "containerStatuses": [copy.deepcopy(r.status) for r in self.runs],
            }

    def push_status(self) -> None:
        with self.lock:
            status = self.status()
            body = json.dumps(status, sort_keys=True)
            if body == self.pushed:
                return
            try:
                self.executor.kube.merge_patch(pod_path(self.pod, "/status"), {"status": status})
                self.pushed = body
            except ApiError as err:
                if err.status == 404:
                    self.stopping.set()
                else:
                    log.warning("%s: status update failed: %s", self.key, err)

    def set_condition(self, kind: str, status: bool, reason: str = "") -> None:
        value = "True" if status else "False"
        with self.lock:
            old, _, at = self.conditions[kind]
            self.conditions[kind] = (value, reason, at if old == value else now())

    # ---- volumes -------------------------------------------------------------------------------

    def prepare_volumes(self) -> bool:
        """Materialise every volume under the pod's folder; retry while something is missing."""
        while not self.stopping.is_set():
            try:
                for volume in self.pod["spec"].get("volumes") or []:
                    self.volumes[volume["name"]] = self.executor.materialise(self.pod, volume, self.dir)
                    if READ_ONLY_VOLUMES & volume.keys():
                        self.read_only.add(volume["name"])
                return True
            except rt.ConfigError as err:
                for run in self.init_runs + self.runs:
                    run.status["state"] = {"waiting": {"reason": "ContainerCreating", "message": str(err)}}
                self.push_status()
                self.stopping.wait(1)
        return False

    def mounts(self, spec: Mapping, env: Mapping[str, str]) -> list[tuple[str, str, bool]]:
        result = []
        for m in spec.get("volumeMounts") or []:
            src = self.volumes.get(m["name"])
            if src is None:
                raise rt.ConfigError(f"volumeMount {m['name']!r} names no volume of the pod")
            sub = m.get("subPath") or rt.expand(m.get("subPathExpr", ""), env)
            if sub:
                src = os.path.join(src, sub)
                if not os.path.exists(src):
                    os.makedirs(src, exist_ok=True)
            result.append((src, m["mountPath"], bool(m.get("readOnly")) or m["name"] in self.read_only))
        return result

    # ---- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.lifecycle()
        except Exception:
            log.exception("%s: executor error", self.key)
        finally:
            self.finish()

    def lifecycle(self) -> None:
        self.push_status()
        if not self.prepare_volumes():
            return
        self.set_condition("PodReadyToStartContainers", True)
        for run in self.init_runs:
            if run.sidecar:  # a native sidecar keeps running next to the containers
                threading.Thread(target=run.run, daemon=True).start()
                continue
            code = run.run()
            if code is None:
                return
            if code != 0:  # restartPolicy Never (the other policies restarted it in place)
                with self.lock:
                    self.phase = "Failed"
                    for r in self.runs:
                        r.status["state"] = {"waiting": {"reason": "PodInitializing"}}
                self.set_condition("Initialized", False, "ContainersNotInitialized")
                self.push_status()
                self.stop_sidecars()
                return
        with self.lock:
            self.phase = "Running"
        self.set_condition("Initialized", True)
        threads = [threading.Thread(target=r.run, daemon=True) for r in self.runs]
        for t in threads:
            t.start()
        self.track_readiness(threads)
        self.stop_sidecars()
        with self.lock:
            states = [r.status["state"] for r in self.runs]
            if all("terminated" in s for s in states):
                self.phase = rt.finished_phase(states)
            reason = "PodCompleted" if self.phase in ("Succeeded", "Failed") else ""
        self.set_condition("ContainersReady", False, reason)
        self.set_condition("Ready", False, reason)
        self.push_status()
        log.info("%s: %s", self.key, self.phase)

    def track_readiness(self, threads: list[threading.Thread]) -> None:
        """Ready while every container runs (no probes here); returns when all threads are done."""
        while any(t.is_alive() for t in threads):
            with self.lock:
                ready = all(r.status["ready"] for r in self.runs)
            self.set_condition("ContainersReady", ready)
            self.set_condition("Ready", ready)
            self.push_status()
            time.sleep(0.2)

    def stop_sidecars(self) -> None:
        for run in self.init_runs:
            if run.sidecar:
                run.kill(self.grace)

    def finish(self) -> None:
        """On deletion or executor shutdown: stop processes; after a deletion, remove the pod as a kubelet
        does (grace 0), which lets finalizers and the Job controller proceed."""
        if not self.stopping.is_set():
            return
        for run in self.init_runs + self.runs:
            run.kill(self.grace)
        self.push_status()
        if self.delete_after:
            uid = self.pod["metadata"]["uid"]
            with contextlib.suppress(ApiError):
                self.executor.kube.call(
                    "DELETE",
                    pod_path(self.pod),
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                )
            shutil.rmtree(self.dir, ignore_errors=True)


class Executor:
    """The node: registration and heartbeat, scheduling of pending pods, one PodRun per bound pod."""

    def __init__(self, args: argparse.Namespace):
        self.kube = Kube(args.kubeconfig)
        self.api_port = str(self.kube.base.rsplit(":", 1)[1])
        self.node_name = args.node_name
        self.state_dir = Path(args.state_dir).resolve()
        self.repo_root = Path(args.repo_root).resolve()
        self.pass_env = args.pass_env
        self.max_restarts = args.max_restarts
        self.labels = dict(kv.split("=", 1) for kv in args.label)
        self.taints = [parse_taint(t) for t in args.taint]
        self.allocatable = {
            "cpu": args.cpu,
            "memory": args.memory,
            "pods": str(args.pods),
            "nvidia.com/gpu": str(args.gpus),
            "ephemeral-storage": "100Gi",
        }
        self.runs: dict[str, PodRun] = {}
        self.deleted: set[str] = set()
        self.unschedulable: dict[str, str] = {}
        self.pods: dict[str, dict] = {}
        self.stop = threading.Event()
        self.registered_at = ""
        self.probes = requests.Session()  # readiness probes: loopback only, never through a proxy
        self.probes.trust_env = False

    # ---- node ----------------------------------------------------------------------------------

    def node_status(self) -> dict:
        t = now()
        since = self.registered_at or t
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": [
                {"type": k, "status": s, "reason": r, "lastHeartbeatTime": t, "lastTransitionTime": since}
                for k, s, r in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "kubeletVersion": "v0.0.0-pod-executor",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "local-process://",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "",
                "kubeProxyVersion": "",
            },
        }

    def register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            **self.labels,
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "spec": {"taints": self.taints},
        }
        try:
            self.kube.call("POST", "/api/v1/nodes", node)
        except ApiError as err:
            if err.status != 409:
                raise
        # Also drops node.kubernetes.io/not-ready, which admission adds on create and which the node
        # lifecycle controller (not run here) would remove once the node reports Ready.
        self.kube.merge_patch(
            f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": labels}, "spec": node["spec"]}
        )
        self.kube.merge_patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()})
        self.registered_at = now()
        log.info("node %s registered: %s", self.node_name, self.allocatable)

    def heartbeat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.kube.merge_patch(
                    f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()}
                )
            except (ApiError, requests.RequestException) as err:
                log.warning("node heartbeat failed: %s", err)

    # ---- objects pods refer to -----------------------------------------------------------------

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        plural = "configmaps" if kind == "configmap" else "secrets"
        obj = self.kube.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if obj is None:
            return None
        if kind == "secret":
            return rt.decode_secret(obj.get("data"))
        return dict(obj.get("data") or {})

    def token(self, pod: Mapping, audience: str | None, seconds: int) -> str:
        sa = pod["spec"].get("serviceAccountName") or "default"
        ns = pod["metadata"]["namespace"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        try:
            resp = self.kube.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body)
        except ApiError as err:
            raise rt.ConfigError(f"token for serviceaccount {ns}/{sa}: {err}") from err
        return resp["status"]["token"]

    def materialise(self, pod: Mapping, volume: Mapping, pod_dir: Path) -> str:
        """The host path that backs `volume` for this pod (files written for config/secret/projected)."""
        name = volume["name"]
        target = pod_dir / "volumes" / name
        ns = pod["metadata"]["namespace"]
        if "hostPath" in volume:
            path = volume["hostPath"]["path"]
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                os.makedirs(path, exist_ok=True)
            elif kind == "FileOrCreate" and not os.path.exists(path):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).touch()
            return path
        if "persistentVolumeClaim" in volume:
            claim = self.state_dir / "pvc" / ns / volume["persistentVolumeClaim"]["claimName"]
            claim.mkdir(parents=True, exist_ok=True)
            return str(claim)
        if "emptyDir" in volume or "ephemeral" in volume:
            target.mkdir(parents=True, exist_ok=True)
            return str(target)
        files: dict[str, tuple[bytes, int]] = {}
        default_mode = 0o644
        if "configMap" in volume or "secret" in volume:
            kind = "configMap" if "configMap" in volume else "secret"
            default_mode = volume[kind].get("defaultMode", default_mode)
            files = self.source_files(pod, kind, volume[kind], default_mode)
        elif "downwardAPI" in volume:
            default_mode = volume["downwardAPI"].get("defaultMode", default_mode)
            files = self.downward_files(pod, volume["downwardAPI"], default_mode)
        elif "projected" in volume:
            default_mode = volume["projected"].get("defaultMode", default_mode)
            for source in volume["projected"].get("sources") or []:
                files.update(self.projected_files(pod, source, default_mode))
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise rt.ConfigError(
                f"volume {name!r}: {kinds} is not supported by the pod executor (supported: configMap, "
                "secret, emptyDir, downwardAPI, projected, hostPath, persistentVolumeClaim)"
            )
        if target.exists():
            shutil.rmtree(target)
        for rel, (data, mode) in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        target.mkdir(parents=True, exist_ok=True)
        return str(target)

    def source_files(self, pod: Mapping, kind: str, ref: Mapping, mode: int) -> dict[str, tuple[bytes, int]]:
        ns = pod["metadata"]["namespace"]
        name = ref.get("name") or ref.get("secretName")
        obj = self.kube.get(
            f"/api/v1/namespaces/{ns}/{'configmaps' if kind == 'configMap' else 'secrets'}/{name}"
        )
        if obj is None:
            if ref.get("optional"):
                return {}
            raise rt.ConfigError(f"{kind} {ns}/{name} not found")
        data: dict[str, bytes] = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        if kind == "secret":
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        items = ref.get("items")
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise rt.ConfigError(f"{kind} {ns}/{name} has no key {item['key']!r}")
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))
        return files

    def downward_files(self, pod: Mapping, ref: Mapping, mode: int) -> dict[str, tuple[bytes, int]]:
        files = {}
        for item in ref.get("items") or []:
            if "fieldRef" in item:
                value = rt.field_value(pod, item["fieldRef"]["fieldPath"])
            else:
                container = item["resourceFieldRef"].get("containerName", "")
                value = rt.resource_value(pod, container, item["resourceFieldRef"], self.allocatable)
            files[item["path"]] = (value.encode(), item.get("mode", mode))
        return files

    def projected_files(self, pod: Mapping, source: Mapping, mode: int) -> dict[str, tuple[bytes, int]]:
        if "configMap" in source:
            return self.source_files(pod, "configMap", source["configMap"], mode)
        if "secret" in source:
            return self.source_files(pod, "secret", source["secret"], mode)
        if "downwardAPI" in source:
            return self.downward_files(pod, source["downwardAPI"], mode)
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            token = self.token(pod, sat.get("audience"), sat.get("expirationSeconds", 3600))
            return {sat["path"]: (token.encode(), mode)}
        raise rt.ConfigError(f"projected source {sorted(source)} is not supported by the pod executor")

    # ---- scheduling ----------------------------------------------------------------------------

    def ready_nodes(self) -> list[dict]:
        nodes = self.kube.call("GET", "/api/v1/nodes")["items"]
        cutoff = time.time() - NODE_STALE_S
        ready = []
        for node in nodes:
            cond = next(
                (c for c in node.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), None
            )
            if cond and cond["status"] == "True":
                beat = dt.datetime.fromisoformat(cond["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()
                if beat >= cutoff:
                    ready.append(node)
        return sorted(ready, key=lambda n: n["metadata"]["name"])

    def schedule(self, pod: dict) -> None:
        nodes = self.ready_nodes()
        reasons = []
        for node in nodes:
            name = node["metadata"]["name"]
            on_node = [p for p in self.pods.values() if p["spec"].get("nodeName") == name]
            reason = rt.unschedulable_reason(pod, node, on_node)
            if reason is None:
                self.bind(pod, name)
                return
            reasons.append(reason)
        message = f"0/{len(nodes)} nodes are available: " + ", ".join(
            sorted(set(reasons)) or ["no Ready node"]
        )
        uid = pod["metadata"]["uid"]
        if self.unschedulable.get(uid) != message:
            self.unschedulable[uid] = message
            cond = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": now(),
            }
            with contextlib.suppress(ApiError):
                self.kube.call(
                    "PATCH",
                    pod_path(pod, "/status"),
                    {"status": {"conditions": [cond]}},
                    content_type="application/strategic-merge-patch+json",
                )
            log.info(
                "%s/%s unschedulable: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], message
            )

    def bind(self, pod: dict, node: str) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            self.kube.call("POST", pod_path(pod, "/binding"), body)
            pod["spec"]["nodeName"] = node  # count it at once for the next pod's fit
            self.unschedulable.pop(meta["uid"], None)
            log.info("%s/%s bound to %s", meta["namespace"], meta["name"], node)
        except ApiError as err:
            log.info("%s/%s binding skipped: %s", meta["namespace"], meta["name"], err)

    # ---- the loop ------------------------------------------------------------------------------

    def sync(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        phase = pod.get("status", {}).get("phase")
        if not spec.get("nodeName"):
            if not meta.get("deletionTimestamp") and phase == "Pending":
                self.schedule(pod)
            return
        if spec["nodeName"] != self.node_name:
            return
        run = self.runs.get(uid)
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            if run is not None and run.is_alive():
                run.request_stop(grace, delete=True)
            elif uid not in self.deleted:
                self.deleted.add(uid)
                with contextlib.suppress(ApiError):
                    self.kube.call(
                        "DELETE", pod_path(pod), {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
                    )
            return
        if run is None and phase not in ("Succeeded", "Failed"):
            run = PodRun(self, pod)
            self.runs[uid] = run
            log.info("%s/%s starting", meta["namespace"], meta["name"])
            run.start()

    def sync_safely(self, pod: dict) -> None:
        """One pod's trouble (an unexpected shape, an API error) must not stop the node for the others."""
        try:
            self.sync(pod)
        except Exception:
            log.exception("%s/%s: sync failed", pod["metadata"].get("namespace"), pod["metadata"].get("name"))

    def loop(self, deadline: float, owner_pid: int | None) -> None:
        while not self.stop.is_set():
            if time.time() > deadline or (owner_pid and not pid_alive(owner_pid)):
                log.info("time limit reached or owner gone: shutting down")
                return
            try:
                listing = self.kube.call("GET", "/api/v1/pods")
                self.pods = {p["metadata"]["uid"]: p for p in listing["items"]}
                for pod in list(self.pods.values()):
                    self.sync_safely(pod)
                rv = listing["metadata"]["resourceVersion"]
                for kind, pod in self.kube.watch("/api/v1/pods", rv, RELIST_S):
                    if kind == "ERROR":
                        break
                    uid = pod["metadata"]["uid"]
                    if kind == "DELETED":
                        self.pods.pop(uid, None)
                        self.unschedulable.pop(uid, None)
                        run = self.runs.pop(uid, None)
                        if run is not None:
                            run.request_stop(0, delete=False)
                        continue
                    self.pods[uid] = pod
                    self.sync_safely(pod)
                    if self.stop.is_set():
                        return
            except (ApiError, requests.RequestException) as err:
                log.warning("API error, retrying: %s", err)
                self.stop.wait(1)

    def shutdown(self) -> None:
        self.stop.set()
        for run in self.runs.values():
            run.request_stop(1, delete=False)
        for run in self.runs.values():
            run.join(timeout=5)
        with contextlib.suppress(ApiError, requests.RequestException):
            self.kube.call("DELETE", f"/api/v1/nodes/{self.node_name}")


def parse_taint(text: str) -> dict:
    """key=value:Effect or key:Effect."""
    kv, _, effect = text.rpartition(":")
    if not kv or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise SystemExit(f"--taint {text!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, _, value = kv.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="admin kubeconfig (default $KUBECONFIG)"
    )
    p.add_argument("--state-dir", required=True, help="volumes, PVC folders and container logs go here")
    p.add_argument("--node-name", default="local-gpu-node")
    p.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu capacity of the node")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="node label (repeatable)"
    )
    p.add_argument(
        "--taint", action="append", default=[], metavar="KEY[=VALUE]:EFFECT", help="node taint (repeatable)"
    )
    p.add_argument("--repo-root", default=str(REPO_ROOT), help="the 'image': .venv/bin on PATH, PYTHONPATH")
    p.add_argument(
        "--pass-env", action="append", default=[], metavar="NAME", help="pass this variable to containers"
    )
    p.add_argument(
        "--max-restarts", type=int, default=5, help="in-place restarts per container before giving up"
    )
    p.add_argument("--max-seconds", type=float, default=3600, help="exit after this long (bounded lifetime)")
    p.add_argument("--owner-pid", type=int, default=None, help="exit when this process is gone")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.kubeconfig:
        raise SystemExit(
            "--kubeconfig is required (or set KUBECONFIG): the file hack/control-plane.sh start printed"
        )
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        raise SystemExit(
            "the pod executor needs root and util-linux 'unshare' and 'setpriv' (private mount namespaces)"
        )
    executor = Executor(args)
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: executor.stop.set())
    executor.register_node()
    threading.Thread(target=executor.heartbeat, daemon=True).start()
    try:
        executor.loop(time.time() + args.max_seconds, args.owner_pid)
    finally:
        executor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
