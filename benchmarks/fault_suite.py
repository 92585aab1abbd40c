"""Fault suite (issue 15, the part that needs no node): faults injected into the real operator on the
local control plane, and whether every Workspace ended right.

    .venv/bin/python benchmarks/fault_suite.py            # 100 hostile Workspaces, 5 SIGKILLs, ...
    .venv/bin/python benchmarks/fault_suite.py --quick    # small counts (~2 minutes on 2 cores; the test)
    .venv/bin/python benchmarks/fault_suite.py --seed 7   # other random moments
    .venv/bin/python benchmarks/fault_suite.py --node [--quick]  # the node-backed faults (real training):
                                                          # benchmarks/fault_suite_node.py, its docstring

The control plane runs without a node (hack/control-plane.sh without --node): pods stay Pending, so
data Jobs never finish and no tuning Workspace gets as far as a GPU NodeClaim. One operator
(``python -m tuning_controller.operator``, started by hack/operators.start_operator, log appended to
one file across restarts) runs with auto-provisioning on (KAITO_TUNE_AUTO_PROVISIONING=true, the
Karpenter NodeClaim CRD of tests/controller/nodeclaim-crd.yaml installed), a model registry
(KAITO_TUNE_MODEL_REGISTRY, so inference Workspaces validate) and no allowed URL networks (the
production default: loopback and private hosts are refused). Each fault runs in a namespace of its own:

hostile:               Workspaces from a table of attacks (``HOSTILE``, cycled to the count): hostPath,
                       secret and configMap volumes in tuning.input/output.volumeSource, 10k-character names
                       and label values, matchLabels that try to set the controller's own labels, input
                       URLs with credentials or signed (``SECRET-TOKEN-<n>``) pointing at cloud metadata,
                       6to4, IPv4-mapped, integer, loopback and private addresses, uppercase placeholder
                       images, trust_remote_code in the referenced training config, unknown presets and
                       instance types, an inference pod template, ... Ended right: the API server refused
                       the POST (4xx: schema or CEL), or the Workspace got WorkspaceSucceeded=False with
                       reason InvalidSpec and no Job, pod, Deployment, StatefulSet or NodeClaim of it
                       (by owner uid or the controller's ``kaito.sh/workspace`` label) exists.
                       (A signed URL to a public host is a valid Workspace whose data Job must carry
                       the URL, so the table's signed URLs all point at refused hosts.)
operator_sigkill:      valid tuning Workspaces (with an instanceType) POSTed in bursts; a random 0-2 s
                       into each burst the operator gets SIGKILL, then it is started again (until /healthz
                       answers). Ended right: once every Workspace has status.tuning.phase, it owns (by
                       ownerReference uid) exactly one Job ``<ws>-data`` and one ConfigMap
                       ``<ws>-training-config``. ``duplicates``: Jobs or ConfigMaps it owns beyond one each,
                       plus Jobs recreated under the same name (a watch saw a second uid).
deleted_mid_reconcile: inference Workspaces with an instanceType (a NodeClaim comes at once) and tuning
                       Workspaces, each deleted a random 0-1.5 s after its POST. Ended right: the Workspace
                       is gone and, after 10 s more and up to 30 s for the garbage collector, no NodeClaim
                       named ``nodeclaim_name(ws)`` or annotated with its uid, and no Job, ConfigMap,
                       Deployment, Service or pod of it remains.
api_server_restart:    valid tuning Workspaces POSTed (with retries, as a client would) while kube-apiserver
                       is stopped (SIGTERM) a random 0-2 s into the burst and started again with the same
                       command line (etcd keeps the data; the PID file is updated so that
                       ``control-plane.sh stop`` ends it). Ended right: as for operator_sigkill.

``secrets_found`` counts ``SECRET-TOKEN`` in every Workspace status, Event, ConfigMap, Job, pod,
Deployment, Service and NodeClaim and in the operator's log (the controller shows URLs redacted:
artifacts.hosts.redact_url). ``nodeclaims_left``: NodeClaims in the cluster at the end (none is
expected). ``all_right``: every fault ended right for every Workspace, no duplicates, no NodeClaim
left and no secret found. Everything started is stopped by PID at the end. Prints one JSON object.
"""

from __future__ import annotations

import argparse
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cluster_bench import (  # noqa: E402
    WS_API,
    Watch,
    install_crd,
    make_namespace,
    start_control_plane,
    stop_control_plane,
    workspace,
)
from contract.workspace import parse_workspace  # noqa: E402
from hack.operators import Operator, start_operator  # noqa: E402
from hack.processes import stop_process  # noqa: E402
from tuning_controller.kube import Kube, KubeError  # noqa: E402
from tuning_controller.render.nodeclaim import (  # noqa: E402
    NAMESPACE_LABEL,
    NODECLAIM_API_VERSION,
    OWNER_ANNOTATION,
    nodeclaim_name,
)

SECRET = "SECRET-TOKEN"
SKU = "Standard_NC24ads_A100_v4"
OPERATOR_ENV = {
    "KAITO_TUNE_AUTO_PROVISIONING": "true",
    "KAITO_TUNE_MODEL_REGISTRY": "registry.example/kaito-models",
    "KAITO_TUNE_ALLOWED_URL_NETWORKS": "",
}
WORKSPACE_LABEL = "kaito.sh/workspace"
TRUST_CONFIG = "trust-remote-code"  # a training-config ConfigMap that asks for trust_remote_code
# What a Workspace must never get when it is refused (hostile) and must not keep once deleted.
RUNNING_KINDS = (("batch/v1", "Job"), ("v1", "Pod"), ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))
KEPT_KINDS = (("batch/v1", "Job"), ("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"))
SCANNED_KINDS = (*KEPT_KINDS, ("v1", "Pod"), ("v1", "Event"))
POST_THREADS = 8

# ---- the hostile table -------------------------------------------------------------------------------

Mutate = Callable[[dict, int], None]


def put(path: str, value: Any) -> Mutate:
    """Set ``path`` (dotted) of the Workspace to ``value`` (called with n when callable); None deletes."""

    def mutate(ws: dict, n: int) -> None:
        *parents, last = path.split(".")
        node = ws
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value(n) if callable(value) else value

    return mutate


def both(*mutations: Mutate) -> Mutate:
    def mutate(ws: dict, n: int) -> None:
        for m in mutations:
            m(ws, n)

    return mutate


def url(template: str) -> Mutate:
    return put("tuning.input", lambda n: {"urls": [template.format(token=f"{SECRET}-{n}")]})


def volume(side: str, source: dict) -> Mutate:
    return put(f"tuning.{side}", {"volumeSource": source})


def match_labels(labels: dict) -> Mutate:
    return put("resource.labelSelector", {"matchLabels": labels})


def output_image(image: str, secret: str | None = "push") -> Mutate:
    return put("tuning.output", {"image": image, **({"imagePushSecret": secret} if secret else {})})


PRIVILEGED_POD = {
    "spec": {
        "hostNetwork": True,
        "containers": [
            {"name": "evil", "image": "busybox", "securityContext": {"privileged": True}, "command": ["sh"]}
        ],
    }
}
HOSTILE: list[tuple[str, Mutate]] = [
    ("input-hostpath", volume("input", {"hostPath": {"path": "/"}})),
    ("input-secret", volume("input", {"secret": {"secretName": "push"}})),
    ("input-configmap", volume("input", {"configMap": {"name": "kube-root-ca.crt"}})),
    (
        "input-pvc-and-hostpath",
        volume("input", {"persistentVolumeClaim": {"claimName": "d"}, "hostPath": {}}),
    ),
    ("output-hostpath", volume("output", {"hostPath": {"path": "/etc"}})),
    ("output-secret", volume("output", {"secret": {"secretName": "push"}})),
    ("output-configmap", volume("output", {"configMap": {"name": "kube-root-ca.crt"}})),
    ("long-name", put("metadata.name", lambda n: "a" * 10_000 + str(n))),
    ("long-label-value", match_labels({"apps": "x" * 10_000})),
    ("label-workspace", match_labels({WORKSPACE_LABEL: "victim"})),
    ("label-managed-by", match_labels({"app.kubernetes.io/managed-by": "kaito-tune"})),
    ("label-namespace", match_labels({"kaito.sh/workspacenamespace": "kube-system"})),
    ("url-credentials", url("https://user:{token}@data.example.com/x.parquet")),
    ("url-credentials-local", url("https://user:{token}@localhost/x.parquet")),
    ("url-metadata", url("http://169.254.169.254/latest/meta-data/?sig={token}")),
    ("url-metadata-name", url("http://metadata.google.internal/computeMetadata/v1/?sig={token}")),
    ("url-6to4", url("https://[2002:a9fe:a9fe::1]/x.parquet?sig={token}")),
    ("url-mapped-v6", url("https://[::ffff:169.254.169.254]/x.parquet?sig={token}")),
    ("url-integer-ip", url("https://2852039166/x.parquet?sig={token}")),
    ("url-hex-ip", url("https://0xa9.0xfe.0xa9.0xfe/x.parquet?sig={token}")),
    ("url-loopback", url("https://127.0.0.1:8443/x.parquet?sig={token}")),
    ("url-loopback-v6", url("https://[::1]/x.parquet?X-Amz-Signature={token}")),
    ("url-private", url("https://10.0.0.5/x.parquet?sig={token}")),
    ("url-file", url("file:///etc/passwd?sig={token}")),
    ("url-fragment", url("https://192.168.1.1/x.parquet#{token}")),
    ("output-uppercase", output_image("registry.example.com/MY-TEAM/Adapter:v1")),
    ("output-no-push-secret", output_image("registry.example.com/team/adapter:v1", None)),
    ("output-bad-push-secret", output_image("registry.example.com/team/adapter:v1", "../../etc/passwd")),
    ("input-uppercase-image", put("tuning.input", {"image": "registry.example.com/DATA/Set:v1"})),
    ("input-urls-and-image", put("tuning.input", {"urls": ["https://d.example.com/x"], "image": "r.io/d:1"})),
    ("trust-remote-code", put("tuning.config", TRUST_CONFIG)),
    ("unknown-preset", put("tuning.preset", {"name": "phi-3-mini-4k-instruct-evil"})),
    ("method-full", put("tuning.method", "full")),
    ("unknown-instance-type", put("resource.instanceType", "Standard_Evil_GPU")),
    ("node-image-family", put("metadata.annotations", {"kaito.sh/node-image-family": "windows"})),
    ("inference-template", both(put("tuning", None), put("inference", {"template": PRIVILEGED_POD}))),
    ("inference-and-tuning", put("inference", {"preset": {"name": "tiny-llama"}})),
    ("neither", put("tuning", None)),
]


def hostile_workspaces(namespace: str, count: int) -> list[tuple[str, dict]]:
    """(key, Workspace) for ``count`` rows of HOSTILE, cycled."""
    out = []
    for n in range(count):
        label, mutate = HOSTILE[n % len(HOSTILE)]
        key = f"h{n:03d}-{label}"[:63]
        ws = workspace(key, namespace)
        mutate(ws, n)
        out.append((key, ws))
    return out


# ---- the cluster and the operator ---------------------------------------------------------------------


class Cluster:
    """The control plane in ``state``, its admin client and the operator (restartable)."""

    def __init__(self, state: Path):
        self.state = state
        self.log_path = state / "operator.log"
        self.operator: Operator | None = None
        self.api_servers: list[subprocess.Popen] = []  # restarted ones (our children)

    def start(self) -> None:
        self.kubeconfig = start_control_plane(self.state, max_seconds=1800)
        self.kube = Kube.from_environment(str(self.kubeconfig))
        install_crd(self.kube)
        crd = yaml.safe_load((ROOT / "tests" / "controller" / "nodeclaim-crd.yaml").read_text())
        self.kube.apply(crd)
        until(lambda: self.kube.list(NODECLAIM_API_VERSION, "NodeClaim") is not None, 60, "NodeClaims")
        self.start_operator()

    def start_operator(self) -> None:
        self.operator = start_operator(self.kubeconfig, self.log_path, **OPERATOR_ENV)

    def kill_operator(self) -> None:
        assert self.operator is not None
        self.operator.stop(signal.SIGKILL)

    def restart_api_server(self) -> float:
        """Stop kube-apiserver (SIGTERM) and start it again with its command line; etcd keeps the data.
        Returns the seconds until it answered /readyz again."""
        started = time.monotonic()
        pid_file = self.state / "pids" / "kube-apiserver.pid"
        old = psutil.Process(int(pid_file.read_text()))
        argv = old.cmdline()
        old.terminate()  # it waits up to 60 s for open watches; a crash-like stop after 5 s
        if not until(lambda: not running(old), 5, "the old kube-apiserver to exit", interval=0.1):
            old.kill()
            until(lambda: not running(old), 30, "the old kube-apiserver to be killed", interval=0.1)
        with open(self.state / "logs" / "kube-apiserver.log", "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=self.state, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.api_servers.append(proc)
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped when `stop` ends it
        pid_file.write_text(f"{proc.pid}\n")
        until(lambda: answers(self.kube, "/readyz"), 120, "kube-apiserver /readyz after the restart")
        return time.monotonic() - started

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        stop_control_plane(self.state)
        for proc in self.api_servers:
            stop_process(proc)
        if not os.environ.get("KEEP_STATE"):
            shutil.rmtree(self.state, ignore_errors=True)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def answers(kube: Kube, path: str) -> bool:
    try:
        kube.request("GET", path, timeout=5)
    except Exception:
        return False
    return True


def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """``predicate()`` until truthy (errors count as not yet: the API server may be restarting);
    None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ---- reading the cluster ------------------------------------------------------------------------------


def uid_of(obj: dict) -> str:
    return obj["metadata"]["uid"]


def owner_uids(obj: dict) -> set[str]:
    return {ref.get("uid", "") for ref in obj["metadata"].get("ownerReferences") or []}


def of_workspace(obj: dict, name: str, uid: str) -> bool:
    """Whether ``obj`` belongs to the Workspace: owned by its uid, or labelled with its name."""
    labels = obj["metadata"].get("labels") or {}
    return uid in owner_uids(obj) or labels.get(WORKSPACE_LABEL) == name


def listing(kube: Kube, namespace: str, kinds) -> list[dict]:
    out = []
    for api_version, kind in kinds:
        out += [{**o, "kind": kind} for o in kube.list(api_version, kind, namespace)]
    return out


def condition(ws: dict, type_: str) -> dict:
    found = (ws.get("status") or {}).get("conditions") or []
    return next((c for c in found if c.get("type") == type_), {})


def phase(ws: dict) -> str:
    return ((ws.get("status") or {}).get("tuning") or {}).get("phase") or ""


def post(kube: Kube, obj: dict, retry_s: float = 0) -> dict | KubeError:
    """POST a Workspace; its stored form, or the API server's 4xx. With ``retry_s`` transport errors and
    5xx are retried for that long (as kubectl's user would), and AlreadyExists means an earlier try won."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return kube.create(obj)
        except KubeError as err:
            if err.already_exists and retry_s:
                meta = obj["metadata"]
                return kube.get(WS_API, "Workspace", meta["namespace"], meta["name"]) or err
            if err.status < 500 and err.status != 429:
                return err
            if time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def post_all(kube: Kube, objects: list[dict], retry_s: float = 0) -> list[dict | KubeError]:
    with ThreadPoolExecutor(POST_THREADS) as pool:
        return list(pool.map(lambda o: post(kube, o, retry_s), objects))


def nodeclaims(kube: Kube) -> list[dict]:
    return kube.list(NODECLAIM_API_VERSION, "NodeClaim")


def claims_in(kube: Kube, namespace: str) -> list[dict]:
    """NodeClaims of Workspaces in ``namespace`` (the controller's namespace label)."""
    return [
        c for c in nodeclaims(kube) if (c["metadata"].get("labels") or {}).get(NAMESPACE_LABEL) == namespace
    ]


# ---- fault: hostile Workspaces -----------------------------------------------------------------------


def hostile(cluster: Cluster, count: int) -> dict:
    kube, ns = cluster.kube, "hostile"
    make_namespace(kube, ns)
    config = {"ModelConfig": {"trust_remote_code": True, "local_files_only": False}}
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": TRUST_CONFIG, "namespace": ns},
            "data": {"training_config.yaml": yaml.safe_dump({"training_config": config})},
        }
    )
    rows = hostile_workspaces(ns, count)
    answered = post_all(kube, [ws for _, ws in rows])
    accepted = {key: got for (key, _), got in zip(rows, answered, strict=True) if isinstance(got, dict)}
    refused = {key: got for (key, _), got in zip(rows, answered, strict=True) if isinstance(got, KubeError)}

    def settled() -> bool:
        found = {w["metadata"]["name"]: w for w in kube.list(WS_API, "Workspace", ns)}
        return all(condition(found.get(k, {}), "WorkspaceSucceeded") for k in accepted)

    until(settled, 180, "a WorkspaceSucceeded condition on every accepted hostile Workspace", interval=1)
    time.sleep(3)  # whatever a wrong reconcile would create has had time to appear
    found = {w["metadata"]["name"]: w for w in kube.list(WS_API, "Workspace", ns)}
    objects = listing(kube, ns, RUNNING_KINDS) + nodeclaims(kube)
    not_right, created = [], 0
    for key, stored in accepted.items():
        ws = found.get(key, {})
        cond = condition(ws, "WorkspaceSucceeded")
        mine = [
            f"{o['kind']}/{o['metadata']['name']}" for o in objects if of_workspace(o, key, uid_of(stored))
        ]
        created += len(mine)
        if (cond.get("status"), cond.get("reason")) != ("False", "InvalidSpec") or mine:
            state = f"WorkspaceSucceeded={cond.get('status')} reason={cond.get('reason')} phase={phase(ws)}"
            not_right.append({"workspace": key, "state": state, "objects": mine})
    return {
        "injected": count,
        "ended_right": count - len(not_right),
        "api_refused": len(refused),
        "invalid_status": len(accepted) - len(not_right),
        "objects_created": created,
        "refused_statuses": dict(Counter(str(e.status) for e in refused.values())),
        "not_right": not_right[:10],
    }


# ---- faults: operator SIGKILL and API server restart -------------------------------------------------


class QuietWatch(Watch):
    """A Watch whose connection may break once it was told to stop."""

    def run(self) -> None:
        try:
            super().run()
        except Exception:
            if not self.stop.is_set():
                raise


class JobUids:
    """Every uid a watch saw under each Job name: more than one means the Job was made again."""

    def __init__(self, kube: Kube, namespace: str):
        self.uids: dict[str, set[str]] = defaultdict(set)
        self.watch = QuietWatch(kube, "batch/v1", "Job", namespace, shows=self.record)
        self.watch.start()
        self.watch.ready.wait(10)

    def record(self, obj: dict) -> bool:
        self.uids[obj["metadata"]["name"]].add(uid_of(obj))
        return False  # never "seen": every later event of the name comes here too

    def recreated(self, name: str) -> int:
        return max(0, len(self.uids.get(name, ())) - 1)


def tuning_outcome(kube: Kube, ns: str, names: list[str], job_uids: JobUids | None) -> dict:
    """Once every Workspace has a phase: which own exactly one data Job and one training ConfigMap."""
    until(
        lambda: sum(1 for w in kube.list(WS_API, "Workspace", ns) if phase(w)) >= len(names),
        300,
        f"a phase on every Workspace in {ns}",
        interval=1,
    )
    time.sleep(2)  # a duplicate made late by a reconcile in flight would show now
    found = {w["metadata"]["name"]: w for w in kube.list(WS_API, "Workspace", ns)}
    objects = listing(kube, ns, (("batch/v1", "Job"), ("v1", "ConfigMap")))
    not_right, duplicates = [], 0
    for name in names:
        ws = found.get(name)
        uid = uid_of(ws) if ws else "-"
        jobs = [o["metadata"]["name"] for o in objects if o["kind"] == "Job" and uid in owner_uids(o)]
        maps = [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap" and uid in owner_uids(o)]
        recreated = job_uids.recreated(f"{name}-data") if job_uids else 0
        duplicates += max(0, len(jobs) - 1) + max(0, len(maps) - 1) + recreated
        right = jobs == [f"{name}-data"] and maps == [f"{name}-training-config"] and ws and phase(ws)
        if not right or recreated:
            state = f"phase={phase(ws or {})!r} jobs={jobs} configmaps={maps} recreated={recreated}"
            not_right.append({"workspace": name, "state": state})
    owned = {uid_of(w) for w in found.values()}
    strays = [o["metadata"]["name"] for o in objects if owner_uids(o) and not owner_uids(o) & owned]
    return {
        "workspaces": len(names),
        "ended_right": len(names) - len(not_right),
        "duplicates": duplicates,
        "stray_objects": strays[:10],
        "nodeclaims": len(claims_in(kube, ns)),
        "not_right": not_right[:10],
    }


def operator_sigkill(cluster: Cluster, rng: random.Random, count: int, kills: int) -> dict:
    kube, ns = cluster.kube, "sigkill"
    make_namespace(kube, ns)
    job_uids = JobUids(kube, ns)
    names = [f"k{i:03d}" for i in range(count)]
    delays = []
    for burst in (names[i::kills] for i in range(kills)):
        poster = threading.Thread(target=post_all, args=(kube, [workspace(n, ns) for n in burst], 120))
        poster.start()
        delays.append(round(rng.uniform(0, 2), 2))
        time.sleep(delays[-1])
        cluster.kill_operator()
        poster.join()
        cluster.start_operator()
    outcome = tuning_outcome(kube, ns, names, job_uids)
    job_uids.watch.stop.set()
    return {"injected": kills, "kill_delays_s": delays, **outcome}


def api_server_restart(cluster: Cluster, rng: random.Random, count: int) -> dict:
    kube, ns = cluster.kube, "restart"
    make_namespace(kube, ns)
    names = [f"r{i:03d}" for i in range(count)]
    poster = threading.Thread(target=post_all, args=(kube, [workspace(n, ns) for n in names], 180))
    poster.start()
    delay = round(rng.uniform(0, 2), 2)
    time.sleep(delay)
    down_s = cluster.restart_api_server()
    poster.join()
    outcome = tuning_outcome(kube, ns, names, None)
    operator_alive = cluster.operator is not None and cluster.operator.process.poll() is None
    return {
        "injected": 1,
        "restart_delay_s": delay,
        "api_down_s": round(down_s, 1),
        "operator_alive": operator_alive,
        **outcome,
    }


# ---- fault: deleted mid-reconcile --------------------------------------------------------------------


def inference_workspace(name: str, namespace: str) -> dict:
    return {
        "apiVersion": WS_API,
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": SKU, "labelSelector": {"matchLabels": {"apps": "serve"}}},
        "inference": {
            "preset": {"name": "tiny-llama"},
            "adapters": [{"source": {"name": "code-word", "image": "127.0.0.1:9/a:v1"}, "strength": "1.0"}],
        },
    }


def leftovers(kube: Kube, ns: str, deleted: list[dict]) -> dict[str, list[str]]:
    """name -> what of the deleted Workspace remains (itself, its NodeClaim, objects it owned)."""
    gone = {w["metadata"]["name"]: uid_of(w) for w in deleted}
    present = {w["metadata"]["name"]: uid_of(w) for w in kube.list(WS_API, "Workspace", ns)}
    objects = listing(kube, ns, (*KEPT_KINDS, ("v1", "Pod")))
    claims = nodeclaims(kube)
    out: dict[str, list[str]] = {}
    for ws in deleted:
        name, uid = ws["metadata"]["name"], uid_of(ws)
        claim_name = nodeclaim_name(parse_workspace(ws)[0])
        left = ["Workspace"] if present.get(name) == gone[name] else []
        left += [
            f"NodeClaim/{c['metadata']['name']}"
            for c in claims
            if c["metadata"]["name"] == claim_name
            or (c["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION) == uid
        ]
        left += [f"{o['kind']}/{o['metadata']['name']}" for o in objects if of_workspace(o, name, uid)]
        if left:
            out[name] = left
    return out


def deleted_mid_reconcile(cluster: Cluster, rng: random.Random, count: int) -> dict:
    """``count`` inference and ``count`` tuning Workspaces, each deleted 0-1.5 s after its POST."""
    kube, ns = cluster.kube, "deleted"
    make_namespace(kube, ns)
    objects = [inference_workspace(f"i{i:03d}", ns) for i in range(count)]
    objects += [workspace(f"t{i:03d}", ns) for i in range(count)]
    delays = [rng.uniform(0, 1.5) for _ in objects]

    def apply_then_delete(obj: dict, delay: float) -> dict:
        created = kube.create(obj)
        time.sleep(delay)
        kube.delete(WS_API, "Workspace", ns, obj["metadata"]["name"], uid=uid_of(created))
        return created

    with ThreadPoolExecutor(POST_THREADS) as pool:
        deleted = list(pool.map(apply_then_delete, objects, delays))
    until(lambda: not kube.list(WS_API, "Workspace", ns), 120, "the deleted Workspaces to be gone")
    time.sleep(10)  # the operator's time to act on the deletions
    until(lambda: not leftovers(kube, ns, deleted), 30, "the garbage collector", interval=1)
    left = leftovers(kube, ns, deleted)
    after = {obj["metadata"]["name"]: delay for obj, delay in zip(objects, delays, strict=True)}
    return {
        "injected": len(deleted),
        "inference": count,
        "tuning": count,
        "ended_right": len(deleted) - len(left),
        "nodeclaims_left": sum(1 for v in left.values() for x in v if x.startswith("NodeClaim/")),
        "not_right": [
            {"workspace": k, "deleted_after_s": round(after[k], 2), "left": v}
            for k, v in list(left.items())[:10]
        ],
    }


# ---- secrets and the whole run -----------------------------------------------------------------------


def secrets_found(cluster: Cluster, namespaces: list[str]) -> dict[str, int]:
    """Where ``SECRET-TOKEN`` shows up: Workspace statuses, Events, the objects the controller made and
    the operator log (the Workspaces' specs, which hold the URLs, are not counted)."""
    kube, where = cluster.kube, Counter()
    for ns in namespaces:
        for ws in kube.list(WS_API, "Workspace", ns):
            where["workspace status"] += json.dumps(ws.get("status")).count(SECRET)
        for obj in listing(kube, ns, SCANNED_KINDS):
            where[obj["kind"]] += json.dumps(obj).count(SECRET)
    where["Event (all namespaces)"] += json.dumps(kube.list("v1", "Event")).count(SECRET)
    where["NodeClaim"] += json.dumps(nodeclaims(kube)).count(SECRET)
    where["operator log"] += cluster.log_path.read_text(errors="replace").count(SECRET)
    return {k: v for k, v in where.items() if v}


def fault_right(fault: dict) -> bool:
    if "skipped" in fault:
        return True
    expected = fault.get("workspaces", fault["injected"])
    clean = not fault.get("duplicates") and not fault.get("nodeclaims") and not fault.get("nodeclaims_left")
    return fault["ended_right"] == expected and clean and not fault.get("stray_objects")


SIZES = {  # hostile, sigkill workspaces, kills, deleted (each kind), restart workspaces
    "quick": (len(HOSTILE), 8, 2, 4, 8),
    "full": (100, 40, 5, 15, 30),
}


def run(quick: bool, seed: int) -> dict:
    started = time.monotonic()
    rng = random.Random(seed)
    n_hostile, n_kill_ws, kills, n_deleted, n_restart = SIZES["quick" if quick else "full"]
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="fault-suite-")))
    try:
        cluster.start()
        faults, timings = {}, {}
        steps = (
            ("hostile", lambda: hostile(cluster, n_hostile)),
            ("deleted_mid_reconcile", lambda: deleted_mid_reconcile(cluster, rng, n_deleted)),
            ("operator_sigkill", lambda: operator_sigkill(cluster, rng, n_kill_ws, kills)),
            ("api_server_restart", lambda: api_server_restart(cluster, rng, n_restart)),
        )
        for name, step in steps:
            t0 = time.monotonic()
            faults[name] = step()
            timings[name] = round(time.monotonic() - t0, 1)
        secrets = secrets_found(cluster, ["hostile", "deleted", "sigkill", "restart"])
        claims = nodeclaims(cluster.kube)
        return {
            "faults": faults,
            "fault_seconds": timings,
            "nodeclaims_left": len(claims),
            "secrets_found": sum(secrets.values()),
            "secrets_where": secrets,
            "all_right": all(fault_right(f) for f in faults.values()) and not claims and not secrets,
            "quick": quick,
            "seed": seed,
            "seconds": round(time.monotonic() - started, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        }
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (for the test)")
    parser.add_argument("--seed", type=int, default=15, help="seed of the random moments")
    parser.add_argument(
        "--node", action="store_true", help="the node-backed faults instead (benchmarks/fault_suite_node.py)"
    )
    parser.add_argument("--steps", type=int, default=30, help="with --node: training steps per Workspace")
    args = parser.parse_args()
    if args.node:
        from benchmarks.fault_suite_node import run as run_node

        print(json.dumps(run_node(args.quick, args.seed, args.steps)))
        return 0
    print(json.dumps(run(args.quick, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
