"""The ``fetch-model`` init container, its Secrets and the model cache, shared by every pod that loads a
preset: the CPU pre-flight (config and tokenizer only), the training Job and the inference server.

    [init] fetch-model   kaito-tune fetch-model --image REF|--hub REPO@REV --dest /mnt/model/weights
                         [--cache /mnt/model-cache]: pins the source, verifies every blob, fills the cache
                         once per content and links /mnt/model/weights to the entry
    reader               mounts /mnt/model and the cache read-only; loads /mnt/model/weights offline

The source's credentials (``presetOptions.imagePullSecrets[0]`` or ``modelAccessSecret``) are mounted in
fetch-model only. With ``model_cache: pvc`` the cache is the namespace's ``kaito-tune-model-cache``
claim, shared by every Job and server there; with ``emptyDir`` each pod fetches its own copy.

With ``model_image_volumes`` an OCI source in KAITO's layout (files under ``/data``: ``kaito-tune model
push --format kaito``) is mounted read-only as a Kubernetes image volume at /mnt/model/weights (subPath
``data``) instead: no copy, the node's runtime pulls and caches it like an image, and its pull secret goes
to the pod's imagePullSecrets. Runtimes cannot mount ModelPack's raw layers, hence the layout. It needs
Kubernetes 1.36 (ImageVolume GA; 1.33-1.35 with the ImageVolume feature gate, for subPath) and a runtime
that implements image volumes (containerd >= 2.1, CRI-O >= 1.31). The CPU pre-flight still fetches the
configs with fetch-model, to pin the digest and check the credentials before a GPU is requested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.pod import MODEL_CACHE_DIR, MODEL_DIR, MODEL_WEIGHTS, TERMINATION_LOG
from contract.workspace import PresetSpec
from presets.catalog import get_model
from tuning_controller.model_source import HUB_TOKEN_KEY, ModelSource, model_source
from tuning_controller.render.pod import (
    docker_config_volume,
    mount,
    plain_http_args,
    scratch_volume,
    tools_container,
)
from tuning_controller.settings import Settings

FETCH_MODEL = "fetch-model"
MODEL_SECRET_DIR = "/mnt/model-secret"
MODEL_CACHE_CLAIM = "kaito-tune-model-cache"


def workspace_model_source(spec: PresetSpec, settings: Settings, pinned: str = "") -> ModelSource:
    """The Workspace's weights source; ``pinned`` (the pre-flight's resolved reference) replaces the
    reference so the training fetches exactly what the pre-flight checked."""
    source = model_source(get_model(spec.name), spec.preset_options, settings.model_registry)
    if pinned:
        return ModelSource(source.kind, pinned, source.pull_secret, source.token_secret)
    return source


@dataclass(frozen=True)
class ModelParts:
    """What a pod needs to see the weights at /mnt/model/weights."""

    init: list[dict[str, Any]]  # the fetch-model container, or none with an image volume
    volumes: list[dict[str, Any]]
    readers: list[dict[str, Any]]  # mounts for the containers that load the model
    pull_secrets: list[str] = field(default_factory=list)  # the pod's imagePullSecrets (image volume)


def fetch_model_parts(source: ModelSource, settings: Settings, *, config_only: bool = False) -> ModelParts:
    """The fetch-model step (or the image volume) for ``source``.

    The pre-flight (``config_only``) fetches into its own emptyDir and never touches the shared cache.
    """
    if settings.model_image_volumes and source.kind == "oci" and not config_only:
        volume = {"name": "model", "image": {"reference": source.reference, "pullPolicy": "IfNotPresent"}}
        readers = [mount("model", MODEL_WEIGHTS, read_only=True, sub_path="data")]
        return ModelParts([], [volume], readers, [source.pull_secret] if source.pull_secret else [])
    command = ["kaito-tune", "fetch-model", "--dest", MODEL_WEIGHTS]
    mounts = [mount("model", MODEL_DIR)]
    volumes: list[dict[str, Any]] = [scratch_volume("model", settings.model_cache_size)]
    readers = [mount("model", MODEL_DIR, read_only=True)]
    if source.kind == "oci":
        command += ["--image", source.reference, *plain_http_args(settings, source.reference)]
        if source.pull_secret:
            command += ["--docker-config", f"{MODEL_SECRET_DIR}/.dockerconfigjson"]
            volumes.append(docker_config_volume("model-secret", source.pull_secret))
    else:
        command += ["--hub", source.reference]
        if settings.hub_endpoint:
            command += ["--hub-endpoint", settings.hub_endpoint]
        if source.token_secret:
            command += ["--token-file", f"{MODEL_SECRET_DIR}/token"]
            items = [{"key": HUB_TOKEN_KEY, "path": "token"}]
            volumes.append(
                {"name": "model-secret", "secret": {"secretName": source.token_secret, "items": items}}
            )
    if source.pull_secret or source.token_secret:
        mounts.append(mount("model-secret", MODEL_SECRET_DIR, read_only=True))
    if config_only:
        command.append("--config-only")
    else:
        command += ["--cache", MODEL_CACHE_DIR, "--cache-max-gib", str(settings.model_cache_max_gib)]
        mounts.append(mount("model-cache", MODEL_CACHE_DIR))
        readers.append(mount("model-cache", MODEL_CACHE_DIR, read_only=True))
        volumes.append(model_cache_volume(settings))
    command += ["--summary-file", TERMINATION_LOG, "--termination-log", TERMINATION_LOG]
    return ModelParts([tools_container(FETCH_MODEL, command, mounts, settings)], volumes, readers)


def model_cache_volume(settings: Settings) -> dict[str, Any]:
    if settings.model_cache == "pvc":
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": MODEL_CACHE_CLAIM}}
    return scratch_volume("model-cache", settings.model_cache_size)


def render_model_cache_claim(namespace: str, settings: Settings) -> dict[str, Any]:
    """The namespace's shared cache claim; owned by no Workspace, so it outlives them all."""
    spec: dict[str, Any] = {
        "accessModes": [settings.model_cache_access_mode],
        "resources": {"requests": {"storage": settings.model_cache_size}},
    }
    if settings.model_cache_storage_class:
        spec["storageClassName"] = settings.model_cache_storage_class
    labels = {
        "app.kubernetes.io/name": "kaito-tune",
        "app.kubernetes.io/component": "model-cache",
        "app.kubernetes.io/managed-by": "kaito-tune",
    }
    meta = {"name": MODEL_CACHE_CLAIM, "namespace": namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}
