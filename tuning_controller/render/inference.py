"""The objects of an inference Workspace: the server's Deployment (StatefulSet when multi-node) and Service.

    <ws>            Service, port 80 -> the server's port (5000); multi-node: only the leader pod <ws>-0
    <ws>            Deployment (resource.count == 1) or StatefulSet (count > 1, pods <ws>-0..N-1)
    <ws>-headless   multi-node only: headless Service with 29500 for torch distributed rendezvous

Pod, transformers runtime (``python -m inference``):

    [init] fetch-model      the preset's weights into /mnt/model/weights through the model cache
                            (``render.model``: presetOptions.image, the cluster's model registry or the hub)
    [init] pull-<adapter>   ``kaito-tune pull <image> /mnt/adapter/<name>`` with the adapter's first
                            imagePullSecret as docker config (one per image adapter, unless image volumes)
    server                  base model + adapters combined by strength (KAITO_ADAPTER_STRENGTHS env)

vLLM runtime: the same pulls, then ``[init] merge-adapters`` (``python -m inference.merge``) bakes the
strengths into plain LoRA adapters under /mnt/merged, and vLLM serves them with ``--enable-lora
--lora-modules``. Adapters with a ``volumeSource`` are mounted as given; with image volumes enabled, an
adapter image in KAITO's layout is mounted read-only as a Kubernetes ``image`` volume, subPath ``data``
(the requirements are render.model's; its pull secrets go to the pod's imagePullSecrets).

The pod template's ``kaito.sh/adapters-hash`` annotation hashes preset, runtime and adapters, so a changed
adapter (image, strength, source) rolls the pods even when nothing else in the template would change.
Pure functions of the Workspace and the settings.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from contract.pod import (
    ADAPTER_ROOT,
    COMBINED_SUFFIX,
    MERGED_ROOT,
    MODEL_WEIGHTS,
    STRENGTHS_ENV,
    TERMINATION_LOG,
    format_strengths,
    parse_strength,
)
from contract.workspace import GROUP, AdapterSpec, DataSource, Workspace, to_dict
from tuning_controller.render import node_count
from tuning_controller.render.job import child_name
from tuning_controller.render.meta import WORKSPACE_LABEL, bounded_name, labels, metadata
from tuning_controller.render.model import fetch_model_parts, workspace_model_source
from tuning_controller.render.pod import (
    container_security,
    docker_config_volume,
    gpu_resources,
    gpu_tolerations,
    mount,
    node_affinity,
    plain_http_args,
    pod_security,
    rendezvous_service_spec,
    scratch_volume,
    shared_memory_volume,
    tools_container,
)
from tuning_controller.settings import TORCH_DIST_PORT, Settings

COMPONENT = "inference"
SERVER = "server"
MERGE = "merge-adapters"
ADAPTERS_HASH_ANNOTATION = f"{GROUP}/adapters-hash"
PULLED_VOLUME = "adapters"
PULL_SECRET_ROOT = "/mnt/pull-secrets"
SERVICE_PORT = 80


def workload_name(ws: Workspace) -> str:
    """The Workspace's own name, as KAITO names its Deployment and Service."""
    return ws.name


def headless_service_name(ws: Workspace) -> str:
    return child_name(ws, "-headless")


def selector_labels(ws: Workspace) -> dict[str, str]:
    """The immutable Deployment/StatefulSet selector (a subset of ``labels``)."""
    return {WORKSPACE_LABEL: ws.name, "app.kubernetes.io/component": COMPONENT}


def adapters_hash(ws: Workspace, settings: Settings) -> str:
    spec = ws.inference
    decided = {
        "preset": to_dict(spec.preset) if spec and spec.preset else None,
        "adapters": [to_dict(a) for a in (spec.adapters if spec else [])],
        "runtime": settings.inference_runtime,
        "imageVolumes": settings.inference_adapter_image_volumes,
        "modelImageVolumes": settings.model_image_volumes,
    }
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:16]


def _strengths(adapters: list[AdapterSpec]) -> str:
    """The STRENGTHS_ENV value for ``adapters`` (validation has checked every strength)."""
    return format_strengths({a.name: parse_strength(a.strength) for a in adapters})


@dataclass
class _AdapterParts:
    """What the adapters add to the server pod."""

    init: list[dict[str, Any]] = field(default_factory=list)  # pull init containers
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # the server's
    pull_secrets: list[str] = field(default_factory=list)  # extra pod imagePullSecrets


def _adapter_parts(ws: Workspace, settings: Settings) -> _AdapterParts:
    """The adapters' init containers, volumes, server mounts and pod imagePullSecrets.

    Pulled adapters share one emptyDir mounted at /mnt/adapter: the pull stages next to its
    destination and renames it into place, which only works within one filesystem (a volume per
    adapter, mounted at /mnt/adapter/<name>, would make that rename cross a mount: EXDEV).
    Volume and image-volume adapters are mounted at /mnt/adapter/<name> on top.
    """
    parts = _AdapterParts()
    for i, adapter in enumerate(ws.require_inference().adapters):
        if adapter.source is not None:
            _add_adapter(parts, i, adapter.source, settings)
    if parts.init:  # the shared volume goes first: the per-adapter mounts nest inside it
        parts.volumes.insert(0, scratch_volume(PULLED_VOLUME, settings.model_cache_size))
        parts.mounts.insert(0, mount(PULLED_VOLUME, ADAPTER_ROOT, read_only=True))
    return parts


def _add_adapter(parts: _AdapterParts, i: int, source: DataSource, settings: Settings) -> None:
    path = f"{ADAPTER_ROOT}/{source.name}"
    if source.volume_source is not None:
        parts.volumes.append({"name": f"adapter-{i}", **source.volume_source})
        parts.mounts.append(mount(f"adapter-{i}", path, read_only=True))
        return
    if settings.inference_adapter_image_volumes:  # KAITO's layout: the files are under /data
        parts.volumes.append(
            {"name": f"adapter-{i}", "image": {"reference": source.image, "pullPolicy": "IfNotPresent"}}
        )
        parts.mounts.append(mount(f"adapter-{i}", path, read_only=True, sub_path="data"))
        parts.pull_secrets += [s for s in source.image_pull_secrets if s not in parts.pull_secrets]
        return
    command = [
        "kaito-tune",
        "pull",
        source.image,
        path,
        "--replace",
        "--termination-log",
        TERMINATION_LOG,
        *plain_http_args(settings, source.image),
    ]
    pull_mounts = [mount(PULLED_VOLUME, ADAPTER_ROOT)]
    if source.image_pull_secrets:
        secret_dir = f"{PULL_SECRET_ROOT}/{i}"
        command += ["--docker-config", f"{secret_dir}/.dockerconfigjson"]
        parts.volumes.append(docker_config_volume(f"adapter-{i}-pull-secret", source.image_pull_secrets[0]))
        pull_mounts.append(mount(f"adapter-{i}-pull-secret", secret_dir, read_only=True))
    parts.init.append(tools_container(bounded_name(f"pull-{source.name}"), command, pull_mounts, settings))


def _probes(port: int) -> dict[str, Any]:
    """Startup waits for the model to load (up to 30 minutes); then readiness and liveness on /health."""

    def probe(period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": "/health", "port": port},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 5,
        }

    return {"startupProbe": probe(10, 180), "readinessProbe": probe(5, 3), "livenessProbe": probe(10, 6)}


def _transformers_server(ws: Workspace, settings: Settings, gpus: int, image: str) -> dict[str, Any]:
    preset = ws.require_inference().preset_name
    command = ["python", "-m", "inference", "--preset", preset, "--weights", MODEL_WEIGHTS]
    command += [
        "--adapter-root",
        ADAPTER_ROOT,
        "--port",
        str(settings.inference_port),
        "--max-new-tokens",
        str(settings.inference_max_new_tokens),
    ]
    command += ["--termination-log", TERMINATION_LOG]
    env: list[dict[str, Any]] = []
    if ws.require_inference().adapters:
        env.append({"name": STRENGTHS_ENV, "value": _strengths(ws.require_inference().adapters)})
    return {"name": SERVER, "image": image, "command": command, "env": env, "resources": gpu_resources(gpus)}


def _vllm_server(ws: Workspace, settings: Settings, gpus: int) -> dict[str, Any]:
    from presets.catalog import get_model

    preset = get_model(ws.require_inference().preset_name)
    args = [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        MODEL_WEIGHTS,
        "--served-model-name",
        preset.name,
        "--host",
        "0.0.0.0",
        "--port",
        str(settings.inference_port),
        "--tensor-parallel-size",
        str(gpus),
    ]
    if ws.require_inference().adapters:
        names = [a.name for a in ws.require_inference().adapters] + [preset.name + COMBINED_SUFFIX]
        args += ["--enable-lora", "--lora-modules", *(f"{n}={MERGED_ROOT}/{n}" for n in names)]
    script = " ".join(shlex.quote(a) for a in args)
    if ws.require_inference().adapters:  # the rank is known once the merge step has run
        script += f' --max-lora-rank "$(cat {MERGED_ROOT}/max-lora-rank)"'
    return {
        "name": SERVER,
        "image": settings.inference_vllm_image,
        "command": ["sh", "-c", f"exec {script}"],
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "resources": gpu_resources(gpus),
    }


def _merge_container(ws: Workspace, image: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": MERGE,
        "image": image,
        "command": [
            "python",
            "-m",
            "inference.merge",
            "--preset",
            ws.require_inference().preset_name,
            "--adapter-root",
            ADAPTER_ROOT,
            "--output",
            MERGED_ROOT,
            "--termination-log",
            TERMINATION_LOG,
        ],
        "env": [{"name": STRENGTHS_ENV, "value": _strengths(ws.require_inference().adapters)}],
        "volumeMounts": [*mounts, mount("merged", MERGED_ROOT)],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "8Gi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    }


def _multi_node_env(ws: Workspace) -> list[dict[str, Any]]:
    """torch distributed rendezvous: the leader is pod 0 behind the headless Service."""
    leader = f"{workload_name(ws)}-0.{headless_service_name(ws)}.{ws.namespace}.svc.cluster.local"
    index = {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    return [
        {"name": "MASTER_ADDR", "value": leader},
        {"name": "MASTER_PORT", "value": str(TORCH_DIST_PORT)},
        {"name": "NNODES", "value": str(node_count(ws))},
        {"name": "NODE_RANK", "valueFrom": index},
    ]


def render_pod_template(ws: Workspace, settings: Settings, gpus: int) -> dict[str, Any]:
    """The server pod: adapter pulls (and the vLLM merge) as init containers, then the server."""
    spec = ws.require_inference()
    if spec.preset is None:
        raise ValueError(f"Workspace {ws.name!r} has no inference.preset to serve")
    gpus = max(1, int(gpus))
    image = settings.inference_image or settings.trainer_image
    model = fetch_model_parts(workspace_model_source(spec.preset, settings), settings)
    adapters = _adapter_parts(ws, settings)
    init = [*model.init, *adapters.init]
    volumes = [*adapters.volumes, *model.volumes, shared_memory_volume()]
    mounts = adapters.mounts
    if settings.inference_runtime == "vllm":
        server = _vllm_server(ws, settings, gpus)
        if spec.adapters:  # the merge reads the adapters only; vLLM reads the merged ones
            init.append(_merge_container(ws, image, mounts))
            volumes.append(scratch_volume("merged", settings.model_cache_size))
            mounts = [mount("merged", MERGED_ROOT, read_only=True)]
    else:
        server = _transformers_server(ws, settings, gpus, image)
    _finish_server(server, ws, settings, [*mounts, *model.readers, mount("dshm", "/dev/shm")])
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server talks to nobody
        "tolerations": gpu_tolerations(),
        "containers": [server],
        "volumes": volumes,
    }
    if settings.inference_runtime == "transformers":
        pod["securityContext"] = pod_security(settings)
    if init:
        pod["initContainers"] = init
    pod_secrets = [*model.pull_secrets, *adapters.pull_secrets]
    if pod_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in dict.fromkeys(pod_secrets)]
    affinity = node_affinity(ws.resource.label_selector if ws.resource else None)
    if affinity:
        pod["affinity"] = affinity
    annotations = {ADAPTERS_HASH_ANNOTATION: adapters_hash(ws, settings)}
    return {"metadata": {"labels": labels(ws, COMPONENT), "annotations": annotations}, "spec": pod}


def _finish_server(
    server: dict[str, Any], ws: Workspace, settings: Settings, mounts: list[dict[str, Any]]
) -> None:
    """Security, ports (torch-dist across nodes), mounts and probes common to both runtimes."""
    server["securityContext"] = container_security()  # vLLM's image runs as root: no caps, no escalation
    ports = [{"name": "http", "containerPort": settings.inference_port}]
    if node_count(ws) > 1:
        server["env"] = [*server["env"], *_multi_node_env(ws)]
        ports.append({"name": "torch-dist", "containerPort": TORCH_DIST_PORT})
    server.update(
        ports=ports,
        volumeMounts=mounts,
        terminationMessagePolicy="FallbackToLogsOnError",
        **_probes(settings.inference_port),
    )
    if not server["env"]:
        del server["env"]


def render_workload(ws: Workspace, settings: Settings, gpus: int) -> dict[str, Any]:
    """A Deployment with one replica, or a StatefulSet of resource.count pods for multi-node serving."""
    template = render_pod_template(ws, settings, gpus)
    selector = {"matchLabels": selector_labels(ws)}
    meta = metadata(ws, workload_name(ws), COMPONENT)
    if node_count(ws) == 1:
        spec = {"replicas": 1, "selector": selector, "template": template, "strategy": {"type": "Recreate"}}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    spec = {
        "replicas": node_count(ws),
        "serviceName": headless_service_name(ws),
        "podManagementPolicy": "Parallel",
        "selector": selector,
        "template": template,
    }
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec}


def render_services(ws: Workspace) -> list[dict[str, Any]]:
    """The Service (port 80 -> server) and, multi-node, the headless Service for rendezvous."""
    selector = selector_labels(ws)
    if node_count(ws) > 1:
        selector = {**selector, "apps.kubernetes.io/pod-index": "0"}  # only the leader answers
    main = {
        "type": "ClusterIP",
        "selector": selector,
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    if node_count(ws) == 1:
        return [_service(ws, workload_name(ws), main)]
    headless = rendezvous_service_spec(selector_labels(ws))
    return [_service(ws, workload_name(ws), main), _service(ws, headless_service_name(ws), headless)]


def _service(ws: Workspace, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(ws, name, COMPONENT), "spec": spec}


def stale_objects(ws: Workspace) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of objects an earlier resource.count rendered and this one does not."""
    if node_count(ws) > 1:
        return [("apps/v1", "Deployment", workload_name(ws))]
    return [("apps/v1", "StatefulSet", workload_name(ws)), ("v1", "Service", headless_service_name(ws))]


def render_inference_objects(ws: Workspace, settings: Settings, *, gpus: int) -> list[dict[str, Any]]:
    """Every object of an inference Workspace, in apply order (Services first, then the workload)."""
    return [*render_services(ws), render_workload(ws, settings, gpus)]
