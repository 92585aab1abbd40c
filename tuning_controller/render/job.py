"""The two Jobs of a tuning Workspace, its results claim, and the names and labels they share.

    <ws>-data   CPU pre-flight: [init] fetch-data -> [init] fetch-model (config and tokenizer only: the
                reference resolves and the credentials work) -> preflight (trainer dry run; summary in
                the termination message). Bad data or an unreachable model fails here, before any GPU
                is requested.
    <ws>        one pod: [init] fetch-data -> [init] fetch-model (the weights at the digest the pre-flight
                resolved, through the model cache) -> [init] train (checks the data's sha256 against
                the pre-flight's) -> push (the only container with the push secret; runs only after
                train exited 0, because init containers run in order). Volume output: train is the
                main container writing into the volume, and there is no push.

resource.count N > 1 (multi-node; own nodes, ``render.multi_node``):
    <ws>-workers  headless Service: pod <ws>-<i> is <ws>-<i>.<ws>-workers.<ns>.svc.cluster.local
    <ws>          Indexed Job of N pods, each [init] fetch-data -> [init] fetch-model -> train: torchrun
                  --nnodes N, c10d rendezvous hosted by index 0; global rank 0 writes the results and
                  the progress. No push here: every pod has the same template, and the push secret must
                  not reach N pods.
    <ws>-push     after the training Job completed: push from the results claim (shared by the N pods,
                  ReadWriteMany), the only pod with the push secret.
    Where JobSet runs (settings.multi_node_workload), the Indexed Job goes into a JobSet <ws> instead,
    whose controller makes the Service and restarts the group as one (``render.jobset``).

Both steps run the trainer's one entry, ``python -m trainer.qlora preflight|train`` (``trainer.steps``).

Both pods mount the controller's copy of the training config (``render.configmap``). Results and
checkpoints live on ``<ws>-results`` (a PVC owned by the Workspace) so a retried pod resumes from the
trainer's last checkpoint. Everything is a pure function of the Workspace and the settings; the
``kaito.sh/revision`` annotation hashes what decides the result (input, output, config, preset,
method), so the controller replaces a Job when, and only when, one of those changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contract.pod import (
    ADAPTER_IMAGE_ENV,
    CONFIG_DIR,
    CONFIG_KEY,
    DATA_DIR,
    EXIT_NOT_BETTER,
    EXIT_UNUSABLE,
    MLFLOW_CREDENTIAL_ENVS,
    MLFLOW_EXPERIMENT_ENV,
    MLFLOW_TRACKING_URI_ENV,
    MODEL_WEIGHTS,
    PROGRESS_INTERVAL_ENV,
    RESULTS_DIR,
    TERMINATION_LOG,
    WORKSPACE_API_VERSION_ENV,
    WORKSPACE_NAME_ENV,
    WORKSPACE_NAMESPACE_ENV,
)
from contract.training_config import Method
from contract.workspace import GROUP, DataDestination, DataSource, PresetSpec, Workspace, to_dict
from tuning_controller.render import input_urls, node_count
from tuning_controller.render.configmap import training_configmap_name
from tuning_controller.render.jobset import as_jobset, child_job_name
from tuning_controller.render.meta import bounded_name, labels, metadata
from tuning_controller.render.model import ModelParts, fetch_model_parts, workspace_model_source
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

REVISION_ANNOTATION = f"{GROUP}/revision"
DATA_SHA_ANNOTATION = f"{GROUP}/data-sha256"
MLFLOW_EXPERIMENT_ANNOTATION = f"{GROUP}/mlflow-experiment"  # on the Workspace: its run's experiment
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKLOAD_API_VERSION = "kueue.x-k8s.io/v1beta2"  # Kueue's Workload: why a queued Job waits

PUSH_SECRET_DIR = "/mnt/push-secret"
PULL_SECRET_DIR = "/mnt/pull-secret"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# Container names: the status code reads termination messages by these.
FETCH, PREFLIGHT, TRAIN, PUSH = "fetch-data", "preflight", "train", "push"
TRAINER = ["-m", "trainer.qlora"]  # the trainer's entry (python or torchrun runs it)


def child_name(ws: Workspace, suffix: str = "") -> str:
    """``<ws><suffix>``, shortened with a hash when it would exceed 63 characters."""
    return bounded_name(ws.name, suffix)


def data_job_name(ws: Workspace) -> str:
    return child_name(ws, "-data")


def training_job_name(ws: Workspace) -> str:
    """The Workspace's own name, as KAITO names its tuning Job."""
    return ws.name


def results_claim_name(ws: Workspace) -> str:
    return child_name(ws, "-results")


def service_account_name(ws: Workspace) -> str:
    return child_name(ws, "-tuning")


def push_job_name(ws: Workspace) -> str:
    return child_name(ws, "-push")


def rendezvous_service_name(ws: Workspace) -> str:
    return child_name(ws, "-workers")


@dataclass(frozen=True)
class _Tuning:
    """The parts of a (validated) tuning section the Jobs are made of, none of them missing."""

    preset: PresetSpec
    input: DataSource
    output: DataDestination
    method: str  # lower case


def _tuning(ws: Workspace) -> _Tuning:
    tuning = ws.tuning
    if tuning is None or tuning.preset is None or tuning.input is None or tuning.output is None:
        raise ValueError(f"Workspace {ws.name!r} has no tuning section")
    return _Tuning(tuning.preset, tuning.input, tuning.output, Method.require(tuning.method).value)


def revision(ws: Workspace, training_config: Mapping[str, Any]) -> str:
    """A short hash of what decides the training result; a change means a new Job."""
    tuning = _tuning(ws)
    decided = {
        "input": to_dict(tuning.input),
        "output": to_dict(tuning.output),
        "config": training_config,
        "preset": tuning.preset.name,
        "method": tuning.method,
    }
    return hashlib.sha256(json.dumps(decided, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fetch_container(source: DataSource, settings: Settings) -> dict[str, Any] | None:
    """Downloads urls (listed in the revision's Secret) or extracts a data image into the data emptyDir;
    None for volume input."""
    if source.volume_source is not None:
        return None
    command = ["kaito-tune", "fetch-data", "--dest", DATA_DIR, "--termination-log", TERMINATION_LOG]
    mounts = [mount("data", DATA_DIR)]
    if source.urls:
        command += input_urls.fetch_args(source.urls)
        mounts.append(mount(input_urls.VOLUME, input_urls.URLS_DIR, read_only=True))
        for network in settings.allowed_url_networks:
            command += ["--allow-network", network]
    else:
        command += ["--image", source.image, *plain_http_args(settings, source.image)]
        if source.image_pull_secrets:
            command += ["--docker-config", f"{PULL_SECRET_DIR}/.dockerconfigjson"]
            mounts.append(mount("pull-secret", PULL_SECRET_DIR, read_only=True))
    return tools_container(FETCH, command, mounts, settings)


# fetch-data caps what it fetches at 20 GiB (its --max-size-gib); an image's layers may extract to more
# than their compressed size, so the data emptyDir gets twice that before the kubelet evicts the pod.
DATA_SIZE_LIMIT = "40Gi"


def _data_volumes(ws: Workspace, rev: str) -> list[dict[str, Any]]:
    source = _tuning(ws).input
    if source.volume_source is not None:
        return [{"name": "data", **source.volume_source}]
    volumes: list[dict[str, Any]] = [scratch_volume("data", DATA_SIZE_LIMIT)]
    if source.urls:
        volumes.append(input_urls.urls_volume(ws, rev))
    if source.image and source.image_pull_secrets:
        volumes.append(docker_config_volume("pull-secret", source.image_pull_secrets[0]))
    return volumes


def _config_volume(ws: Workspace) -> dict[str, Any]:
    return {
        "name": "config",
        "configMap": {
            "name": training_configmap_name(ws),
            "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
        },
    }


def _trainer_args(tuning: _Tuning) -> list[str]:
    return [
        "--preset",
        tuning.preset.name,
        "--method",
        tuning.method,
        "--config",
        f"{CONFIG_DIR}/{CONFIG_KEY}",
        "--data",
        DATA_DIR,
        "--weights",
        MODEL_WEIGHTS,
    ]


def _job(
    ws: Workspace,
    name: str,
    component: str,
    pod_spec: dict[str, Any],
    *,
    rev: str,
    backoff_limit: int,
    deadline: int,
    settings: Settings,
    failure_rules: list[dict[str, Any]],
    extra_annotations: Mapping[str, str] | None = None,
    pods: int = 1,
) -> dict[str, Any]:
    annotations = {REVISION_ANNOTATION: rev, **(extra_annotations or {})}
    meta = metadata(ws, name, component, annotations)
    pod_labels = labels(ws, component)
    queue = queue_of(ws)
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec},
    }
    if failure_rules:
        spec["podFailurePolicy"] = {"rules": failure_rules}
    if pods > 1:  # pod i is <name>-i (its hostname) and knows its index: JOB_COMPLETION_INDEX
        spec |= {"completionMode": "Indexed", "completions": pods, "parallelism": pods}
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    if settings.ttl_seconds_after_finished:
        spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
    if queue:
        meta["labels"][QUEUE_LABEL] = queue
        spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def queue_of(ws: Workspace) -> str | None:
    """The Kueue LocalQueue the Workspace's Jobs go to (its kueue.x-k8s.io/queue-name label)."""
    return (ws.metadata.get("labels") or {}).get(QUEUE_LABEL) or None


def _fail_job_on_exit(container: str, code: int) -> dict[str, Any]:
    return {
        "action": "FailJob",
        "onExitCodes": {"containerName": container, "operator": "In", "values": [code]},
    }


def _preflight_container(ws: Workspace, settings: Settings, model: ModelParts) -> dict[str, Any]:
    """The trainer's pre-flight: config, preset and data checked on a CPU; the summary goes to the
    termination message."""
    command = [
        "python",
        *TRAINER,
        "preflight",
        "--summary-file",
        TERMINATION_LOG,
        *_trainer_args(_tuning(ws)),
    ]
    return {
        "name": PREFLIGHT,
        "image": settings.preflight_image,
        "command": command,
        "volumeMounts": [
            mount("data", DATA_DIR, read_only=True),
            mount("config", CONFIG_DIR, read_only=True),
            *model.readers,
        ],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "8Gi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    }


def render_data_job(ws: Workspace, settings: Settings, rev: str) -> dict[str, Any]:
    """The CPU pre-flight Job: fetch the data, run the trainer's pre-flight, report a compact summary."""
    tuning = _tuning(ws)
    fetch = _fetch_container(tuning.input, settings)
    model = fetch_model_parts(workspace_model_source(tuning.preset, settings), settings, config_only=True)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the pre-flight talks to nobody
        "securityContext": pod_security(settings),
        "containers": [_preflight_container(ws, settings, model)],
        "initContainers": [*([fetch] if fetch else []), *model.init],
        "volumes": [*_data_volumes(ws, rev), _config_volume(ws), *model.volumes],
    }
    # Bad data exits 1: deterministic, so fail at once; a fetch may be retried once.
    return _job(
        ws,
        data_job_name(ws),
        "data-check",
        pod_spec,
        rev=rev,
        backoff_limit=1,
        deadline=settings.data_deadline_seconds,
        settings=settings,
        failure_rules=[_fail_job_on_exit(PREFLIGHT, EXIT_UNUSABLE)],
    )


def _token_volume() -> dict[str, Any]:
    """The ServiceAccount token for the train container only (the pod does not automount it)."""
    return {
        "name": "progress-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ]
        },
    }


def _results_volume(ws: Workspace, settings: Settings) -> dict[str, Any]:
    output = _tuning(ws).output
    if output.volume_source is not None:
        return {"name": "results", **output.volume_source}
    if settings.results_volume == "pvc":
        return {"name": "results", "persistentVolumeClaim": {"claimName": results_claim_name(ws)}}
    return scratch_volume("results", settings.results_size)


def uses_results_claim(ws: Workspace, settings: Settings) -> bool:
    output = ws.tuning.output if ws.tuning else None
    return output is not None and output.volume_source is None and settings.results_volume == "pvc"


def results_sub_path(ws: Workspace, settings: Settings, rev: str) -> str:
    """On the Workspace's own claim each revision trains in its own folder: a retry of the same
    revision resumes from its checkpoints, and a changed config never finds the old adapter complete."""
    return f"revision-{rev}" if uses_results_claim(ws, settings) else ""


def render_results_claim(ws: Workspace, settings: Settings) -> dict[str, Any]:
    """The PVC that keeps results and checkpoints across pod retries (owned by the Workspace). Several
    nodes train into it (multi-node, each rank resumes from its checkpoints) and the push Job reads it
    from any node: ReadWriteMany, which the storage class must offer (Azure Files, NFS...)."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if node_count(ws) > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": settings.results_size}},
    }
    if settings.results_storage_class:
        spec["storageClassName"] = settings.results_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(ws, results_claim_name(ws), "results"),
        "spec": spec,
    }


def _train_container(
    ws: Workspace, settings: Settings, rev: str, *, data_sha256: str, gpus: int, model: ModelParts
) -> dict[str, Any]:
    """The trainer on every GPU of the node (torchrun for several, and across the nodes of a
    multi-node Job), reporting progress into the Workspace's status with the token of the Workspace's
    own ServiceAccount."""
    launcher = _launcher(ws, settings, rev, gpus)
    step = ["train", "--expect-data-sha256", data_sha256]
    return {
        "name": TRAIN,
        "image": settings.trainer_image,
        "command": [
            *launcher,
            *TRAINER,
            *step,
            *_trainer_args(_tuning(ws)),
            "--output",
            RESULTS_DIR,
            "--progress-interval",
            str(min(5, settings.progress_interval_seconds)),
        ],
        "env": [
            {"name": WORKSPACE_NAME_ENV, "value": ws.name},
            {"name": WORKSPACE_NAMESPACE_ENV, "value": ws.namespace},
            {"name": WORKSPACE_API_VERSION_ENV, "value": settings.workspace_api_version},
            {"name": PROGRESS_INTERVAL_ENV, "value": str(settings.progress_interval_seconds)},
            *_tracking_env(ws, settings),
        ],
        "resources": _train_resources(settings, gpus),
        "volumeMounts": [
            mount("data", DATA_DIR, read_only=True),
            mount("config", CONFIG_DIR, read_only=True),
            mount("results", RESULTS_DIR, sub_path=results_sub_path(ws, settings, rev)),
            mount("dshm", "/dev/shm"),
            mount("progress-token", TOKEN_DIR, read_only=True),
            *model.readers,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    }


def _tracking_env(ws: Workspace, settings: Settings) -> list[dict[str, Any]]:
    """MLflow's own variables for the trainer's client (``trainer.tracking``), when tracking is on: the
    server, the experiment (the Workspace's annotation, else the setting's) and the credentials from the
    Secret the setting names, each key optional; and the image the adapter will be pushed to, which the
    run records. Only the train container gets them: the pre-flight and the push talk to no tracker."""
    if not settings.mlflow_tracking_uri:
        return []
    annotations = ws.metadata.get("annotations") or {}
    experiment = annotations.get(MLFLOW_EXPERIMENT_ANNOTATION) or settings.mlflow_experiment
    env: list[dict[str, Any]] = [
        {"name": MLFLOW_TRACKING_URI_ENV, "value": settings.mlflow_tracking_uri},
        {"name": MLFLOW_EXPERIMENT_ENV, "value": experiment},
    ]
    if _tuning(ws).output.image:
        env.append({"name": ADAPTER_IMAGE_ENV, "value": _tuning(ws).output.image})
    if settings.mlflow_credentials_secret:
        secret = settings.mlflow_credentials_secret
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in MLFLOW_CREDENTIAL_ENVS
        ]
    return env


def uses_jobset(ws: Workspace, settings: Settings) -> bool:
    """Whether the training runs as a JobSet: several nodes, and the controller resolved
    multi_node_workload to jobset."""
    return node_count(ws) > 1 and settings.multi_node_workload == "jobset"


def pod_host(ws: Workspace, settings: Settings, index: int) -> str:
    """The host name of a multi-node training's pod ``index`` (its Indexed Job's, or the JobSet's child
    Job's): a DNS label, so at most 63 characters (tuning_reconcile refuses longer)."""
    job = child_job_name(training_job_name(ws)) if uses_jobset(ws, settings) else training_job_name(ws)
    return f"{job}-{index}"


def _launcher(ws: Workspace, settings: Settings, rev: str, gpus: int) -> list[str]:
    """python for one process, torchrun --standalone for the GPUs of one node, and for N nodes torchrun
    with c10d rendezvous at pod 0's DNS name. Pod 0's agent hosts the rendezvous store because that name
    is its own canonical host name (/etc/hosts of a pod with a subdomain).

    A lost pod restarts the whole group, as JobSet does: torchrun makes no restarts of its own (its
    elastic restart left a replacement pod waiting for a rendezvous key the dead pod's round held), so
    the others' workers stop with it (the stop check, or a failed collective), their torchrun exits,
    the Job recreates every pod, and all ranks resume from the newest checkpoint on the shared claim."""
    nodes = node_count(ws)
    if nodes == 1:
        return ["python"] if gpus == 1 else ["torchrun", "--standalone", f"--nproc-per-node={gpus}"]
    leader = f"{pod_host(ws, settings, 0)}.{rendezvous_service_name(ws)}.{ws.namespace}.svc.cluster.local"
    return [
        "torchrun",
        f"--nnodes={nodes}",
        f"--nproc-per-node={gpus}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={leader}:{TORCH_DIST_PORT}",
        f"--rdzv-id={ws.name}-{rev}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",  # the Job controller sets it; kubelet expands $(...)
    ]


def _train_resources(settings: Settings, gpus: int) -> dict[str, Any]:
    resources = gpu_resources(gpus)
    resources["requests"] |= {"cpu": settings.train_cpu_request, "memory": settings.train_memory_request}
    if settings.train_memory_limit:
        resources["limits"]["memory"] = settings.train_memory_limit
    return resources


def _push_container(ws: Workspace, settings: Settings, rev: str, image: str) -> dict[str, Any]:
    """Pushes the adapter to ``image``; the only container that sees the push secret."""
    command = [
        "kaito-tune",
        "push",
        RESULTS_DIR,
        image,
        "--docker-config",
        f"{PUSH_SECRET_DIR}/.dockerconfigjson",
        "--digest-file",
        TERMINATION_LOG,
        "--termination-log",
        TERMINATION_LOG,
        "--format",
        settings.push_format,
        *plain_http_args(settings, image),
    ]
    mounts = [
        mount("results", RESULTS_DIR, read_only=True, sub_path=results_sub_path(ws, settings, rev)),
        mount("push-secret", PUSH_SECRET_DIR, read_only=True),
    ]
    return tools_container(PUSH, command, mounts, settings)


def _training_pod_spec(
    ws: Workspace, settings: Settings, rev: str, train: dict[str, Any], model: ModelParts
) -> dict[str, Any]:
    """fetch -> train -> push for image output (train an init container, so push runs only after it
    succeeded); fetch -> train for volume output and on several nodes (the push Job follows)."""
    tuning = _tuning(ws)
    output = tuning.output
    volumes = [
        *_data_volumes(ws, rev),
        _config_volume(ws),
        _results_volume(ws, settings),
        shared_memory_volume(),
        _token_volume(),
        *model.volumes,
    ]
    fetch = _fetch_container(tuning.input, settings)
    init = [*([fetch] if fetch else []), *model.init]
    if output.image and node_count(ws) == 1:
        volumes.append(docker_config_volume("push-secret", output.image_push_secret))
        init.append(train)
        containers = [_push_container(ws, settings, rev, output.image)]
    else:
        containers = [train]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account_name(ws),
        "automountServiceAccountToken": False,  # only the train container gets the token (see volumes)
        "securityContext": pod_security(settings),
        "tolerations": gpu_tolerations(),
        "containers": containers,
        "volumes": volumes,
    }
    if init:
        pod_spec["initContainers"] = init
    if model.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in model.pull_secrets]
    affinity = node_affinity(ws.resource.label_selector if ws.resource else None)
    if affinity:
        pod_spec["affinity"] = affinity
    if node_count(ws) > 1:
        pod_spec["subdomain"] = rendezvous_service_name(ws)
    return pod_spec


def render_training_job(
    ws: Workspace, settings: Settings, rev: str, *, data_sha256: str, gpus: int, model_reference: str = ""
) -> dict[str, Any]:
    """The training Job: fetch -> train (every GPU of the node) -> push (image output, one node only).
    ``gpus`` per pod; resource.count pods (an Indexed Job when more than one, in a JobSet where JobSet
    runs).

    ``model_reference`` is the weights' reference the pre-flight pinned (a digest or a commit)."""
    tuning = _tuning(ws)
    model = fetch_model_parts(workspace_model_source(tuning.preset, settings, model_reference), settings)
    gpus = max(1, int(gpus))
    train = _train_container(ws, settings, rev, data_sha256=data_sha256, gpus=gpus, model=model)
    job = _job(
        ws,
        training_job_name(ws),
        "tuning",
        _training_pod_spec(ws, settings, rev, train, model),
        rev=rev,
        backoff_limit=settings.backoff_limit * node_count(ws),  # a lost pod fails the N of its group
        deadline=settings.active_deadline_seconds,
        settings=settings,
        failure_rules=_training_failure_rules(
            train, pushes=bool(tuning.output.image) and node_count(ws) == 1
        ),
        extra_annotations={DATA_SHA_ANNOTATION: data_sha256},
        pods=node_count(ws),
    )
    if uses_jobset(ws, settings):
        return as_jobset(job, rendezvous_service_name(ws), max_restarts=settings.backoff_limit)
    return job


# A pod the cluster took away (eviction, preemption, a node drained) did not fail: retry it without
# counting it against backoffLimit.
IGNORE_DISRUPTION = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


# The push step's refusal of an adapter that failed EvaluationConfig.min_improvement: the verdict is in
# metadata.json next to the adapter, so a retry would refuse again (after fetching everything anew).
FAIL_ON_NOT_BETTER = _fail_job_on_exit(PUSH, EXIT_NOT_BETTER)


def _training_failure_rules(train: dict[str, Any], *, pushes: bool) -> list[dict[str, Any]]:
    """The trainer's "unusable" exit fails the Job at once, but only when the trainer is the container's
    process. torchrun exits 1 for any failure, a SIGTERM included (a deleted or lost pod, which must be
    retried and resume): under it only backoffLimit bounds the retries (the CPU pre-flight has checked the
    data and config before). A pod that ``pushes`` fails the Job when the push refuses a worse adapter."""
    rules = [IGNORE_DISRUPTION]
    if train["command"][0] != "torchrun":
        rules.append(_fail_job_on_exit(TRAIN, EXIT_UNUSABLE))
    return [*rules, FAIL_ON_NOT_BETTER] if pushes else rules


def render_rendezvous_service(ws: Workspace) -> dict[str, Any]:
    """The headless Service of a multi-node Job's pods (their ``subdomain``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ws, rendezvous_service_name(ws), "tuning"),
        "spec": rendezvous_service_spec(labels(ws, "tuning")),
    }


def needs_push_job(ws: Workspace) -> bool:
    """Whether the adapter is pushed by a Job of its own after training (image output, several nodes)."""
    output = ws.tuning.output if ws.tuning else None
    return node_count(ws) > 1 and output is not None and bool(output.image)


def render_push_job(ws: Workspace, settings: Settings, rev: str) -> dict[str, Any]:
    """The multi-node training's push: the results claim read-only, the push secret, on any node."""
    output = _tuning(ws).output
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(settings),
        "containers": [_push_container(ws, settings, rev, output.image)],
        "volumes": [
            _results_volume(ws, settings),
            docker_config_volume("push-secret", output.image_push_secret),
        ],
    }
    return _job(
        ws,
        push_job_name(ws),
        "push",
        pod_spec,
        rev=rev,
        backoff_limit=2,  # a registry blip; the adapter stays on the claim whatever happens
        deadline=settings.active_deadline_seconds,
        settings=settings,
        failure_rules=[FAIL_ON_NOT_BETTER],
    )
