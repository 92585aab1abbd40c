"""Controller settings, read once from the environment (the Helm chart sets them on the Deployment).

Every variable is ``KAITO_TUNE_<NAME>``; a bad value stops the controller at start with the variable,
the value and what is allowed, rather than surfacing later inside a Job.

    KAITO_TUNE_TRAINER_IMAGE=ghcr.io/kaito-tune/runtime:0.1.0   # trainer, pre-flight, inference server
    KAITO_TUNE_TOOLS_IMAGE=ghcr.io/kaito-tune/tools:0.1.0       # fetch-data, fetch-model, push (no torch)
    KAITO_TUNE_PREFLIGHT_IMAGE=ghcr.io/kaito-tune/preflight:0.1.0  # the CPU data check (no torch)
    KAITO_TUNE_AUTO_PROVISIONING=true                           # Karpenter NodeClaims for instanceType
    KAITO_TUNE_ALLOWED_URL_NETWORKS=10.250.0.1/32,127.0.0.0/8   # input URL hosts allowed despite the policy
    KAITO_TUNE_INSECURE_REGISTRIES=10.250.0.1:5000              # registries spoken to over plain http
    KAITO_TUNE_RESULTS_VOLUME=pvc|emptyDir                      # where results and checkpoints live
    KAITO_TUNE_MODEL_REGISTRY=registry.example/kaito-models      # presets' weights as OCI model artifacts
    KAITO_TUNE_MODEL_CACHE=pvc|emptyDir                         # where fetched weights are kept
    KAITO_TUNE_INFERENCE_RUNTIME=transformers|vllm              # how inference Workspaces are served
    KAITO_TUNE_MULTI_NODE_WORKLOAD=auto|job|jobset              # what runs a tuning on several nodes
    KAITO_TUNE_MLFLOW_TRACKING_URI=http://mlflow.mlflow:5000    # trainers log runs there (empty: off)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from artifacts.errors import InvalidInputError
from artifacts.hosts import parse_network
from artifacts.mediatypes import FORMATS
from artifacts.reference import Reference

PREFIX = "KAITO_TUNE_"
RESULTS_VOLUMES = ("pvc", "emptyDir")
MODEL_CACHES = ("pvc", "emptyDir")
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany")
INFERENCE_RUNTIMES = ("transformers", "vllm")
MULTI_NODE_WORKLOADS = ("auto", "job", "jobset")
# Settings that take one of a few words (the allowed words, for the error message).
_CHOICES = {
    "results_volume": RESULTS_VOLUMES,
    "model_cache": MODEL_CACHES,
    "model_cache_access_mode": ACCESS_MODES,
    "push_format": FORMATS,
    "inference_runtime": INFERENCE_RUNTIMES,
    "multi_node_workload": MULTI_NODE_WORKLOADS,
}
TORCH_DIST_PORT = 29500
"""Multi-node inference pods rendezvous on this port, so the server cannot use it."""
# A Kubernetes quantity as the settings take them: a number and a decimal or binary suffix (m: milli).
_QUANTITY = re.compile(r"(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_SUFFIX = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SUFFIX |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# host[:port] of a registry: a DNS name, an IPv4 address or a bracketed IPv6 address; no scheme, no path.
# A Secret's name: a DNS subdomain.
_SECRET_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MLFLOW_EXPERIMENT_MAX = 500  # MLflow's limit on an experiment's name
_REGISTRY = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:(?P<port>[0-9]{1,5}))?")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    """What the controller needs beyond the Workspace; one field per environment variable."""

    trainer_image: str = "ghcr.io/kaito-tune/runtime:0.1.0"
    """The runtime image (docker/runtime.Dockerfile): trainer/, inference/ and the preset models. Runs the
    pre-flight, the training and (unless inference_image says otherwise) the inference server."""
    tools_image: str = "ghcr.io/kaito-tune/tools:0.1.0"
    """Image with artifacts/ only (fetch-data, push): small, and no torch next to the push secret."""
    preflight_image: str = "ghcr.io/kaito-tune/preflight:0.1.0"
    """The CPU pre-flight's image (docker/preflight.Dockerfile): the trainer's dry run without torch, so a
    bad dataset is found without pulling the gigabytes of the runtime image."""
    workspace_api_version: str = "kaito.sh/v1beta1"
    """The version the controller reads and writes Workspaces in (the storage version)."""
    auto_provisioning: bool = False
    """On: a Karpenter NodeClaim per Workspace with an instanceType. Off: existing labelled nodes."""
    node_class_group: str = "karpenter.azure.com"
    node_class_kind: str = "AKSNodeClass"
    node_class_name: str = "default"
    """The NodeClaim's nodeClassRef (KAITO's defaults on AKS)."""
    node_disk_size: str = "300Gi"
    """NodeClaim storage request: room for the model image and checkpoints."""
    allowed_url_networks: tuple[str, ...] = ()
    """Networks (CIDRs or single addresses, comma-separated in the variable) whose hosts tuning-input
    URLs may name despite the SSRF policy: an in-cluster or air-gapped data server on a private address,
    or 127.0.0.0/8 for local development. An admin setting of the controller, never per Workspace; cloud
    metadata names stay refused, and link-local addresses unless a listed network is link-local."""
    insecure_registries: tuple[str, ...] = ()
    """Registries (``host[:port]``, comma-separated in the variable) that serve plain http, like docker's
    insecure-registries: the fetch-data, push and adapter pull containers get ``--plain-http`` for an
    image on one of them (exact match of the reference's registry)."""
    results_volume: str = "pvc"
    """pvc: results and checkpoints on a per-Workspace claim, so a retried pod resumes; emptyDir: lost."""
    results_size: str = "50Gi"
    results_storage_class: str = ""
    model_registry: str = ""
    """Where the presets' weights are mirrored as OCI model artifacts (``kaito-tune model push``):
    ``<model_registry>/<preset>:<revision>``. Empty: weights come from the hub at the catalog's pinned
    revision. A Workspace's presetOptions.image overrides both. Air-gapped clusters set their mirror."""
    hub_endpoint: str = ""
    """The model hub's URL for the fetch-model container (HF_ENDPOINT); empty: huggingface_hub's default."""
    model_cache: str = "emptyDir"
    """emptyDir: each pod fetches its weights; pvc: one claim per namespace (``kaito-tune-model-cache``)
    shared by every Job and server there, keyed by digest, so a model is downloaded once."""
    model_cache_size: str = "200Gi"
    model_cache_storage_class: str = ""
    model_cache_access_mode: str = "ReadWriteOnce"
    """ReadWriteMany where the storage class has it (pods on several nodes share one copy)."""
    model_image_volumes: bool = False
    """Mount an OCI model in KAITO's layout as an image volume instead of copying it (render/model.py
    says what it needs: Kubernetes 1.36, containerd >= 2.1)."""
    model_cache_max_gib: int = 180
    """Least recently used cache entries not in use are deleted while the cache holds more than this."""
    backoff_limit: int = 2
    """Pod retries of the training Job before the Workspace fails (restarts of the whole group on several
    nodes)."""
    multi_node_workload: str = "auto"
    """What runs a tuning of resource.count > 1: job (an Indexed Job and a headless Service of our own),
    jobset (a JobSet, jobset.x-k8s.io/v1alpha2: its controller makes both, and restarts the group as
    one), or auto: jobset when the API server serves JobSets at the controller's start, else job. The
    operator resolves auto at start (tuning_controller.multi_node); unresolved (``kaito-tune render``) it
    renders the Job."""
    train_cpu_request: str = "2"
    train_memory_request: str = "8Gi"
    """What the scheduler sets aside on the node for the train container, beside its GPUs (one rank per
    GPU, the data loader in-process; the weights are read shard by shard through the page cache)."""
    train_memory_limit: str = ""
    """Empty: none. The GPU node serves this one pod, and a limit set too low kills a run at model load or
    hours in; a shared own node may want one (it must be at least train_memory_request)."""
    active_deadline_seconds: int = 7 * 24 * 3600
    """Wall-clock limit of the training Job (7 days: a hung run must not hold GPUs for ever); 0 for none."""
    data_deadline_seconds: int = 1800
    """Wall-clock limit of the CPU pre-flight Job (fetch + dry run)."""
    progress_interval_seconds: int = 15
    """How often the trainer patches status.tuning.progress (at most 30)."""
    ttl_seconds_after_finished: int = 0
    """Delete finished Jobs after this long (0: keep them; the Workspace status keeps the outcome)."""
    run_as_user: int = 1000
    """Non-root uid for the pods (the images are built with this user)."""
    node_retry_seconds: int = 30
    """How often a Workspace waiting for a matching own node looks again."""
    resync_seconds: int = 60
    """A tuning Workspace in progress is reconciled again after this long without an event, so a lost
    Job or pod event (an API server blip) costs at most this much, not a GPU node billing forever."""
    metrics_port: int = 8080
    health_port: int = 8081
    max_workers: int = 96
    """Threads for the synchronous handlers: reconciles of different Workspaces run in parallel. They
    mostly wait on the API server, so many threads cut latency when many Workspaces arrive at once
    (benchmarks/controller_scale.py: p50 1.6 s with 32, 0.6 s with 96 on the same machine)."""
    inference_runtime: str = "transformers"
    """transformers: this project's server (strength by PEFT); vllm: vLLM with merged adapters (GPU only)."""
    inference_image: str = ""
    """Image of the inference server; empty: trainer_image, the runtime image that holds it, so the one
    KAITO_TUNE_TRAINER_IMAGE the chart sets serves both."""
    inference_vllm_image: str = "vllm/vllm-openai:v0.11.0"
    inference_adapter_image_volumes: bool = False
    """Mount adapter images as Kubernetes image volumes instead of pulling them in init containers: the
    adapters must be in KAITO's layout (files under /data; push_format kaito), as for model_image_volumes."""
    push_format: str = "modelpack"
    """Layout of the adapters the push container writes: modelpack (CNCF ModelPack, one layer per file) or
    kaito (an image with the files under /data: what KAITO and Kubernetes image volumes read)."""
    inference_port: int = 5000
    """The server's container port (KAITO's); the Service maps port 80 to it."""
    inference_max_new_tokens: int = 2048
    """Largest completion one request may ask for (transformers runtime)."""
    mlflow_tracking_uri: str = ""
    """An MLflow tracking server (http or https) the train containers log their run to: params, metric
    history, the held-out evaluation (``trainer.tracking``); the run id goes into status.tuning.tracking.
    Empty: no tracking. An admin setting: the users' training configs keep refusing ``report_to``."""
    mlflow_experiment: str = "kaito-tune"
    """The experiment runs go to, unless a Workspace's ``kaito.sh/mlflow-experiment`` annotation names
    another."""
    mlflow_credentials_secret: str = ""
    """A Secret, in each Workspace's namespace, whose MLFLOW_TRACKING_USERNAME and _PASSWORD (or
    MLFLOW_TRACKING_TOKEN) keys reach the train container, and only it, as those variables; each key is
    optional. The chart maps the same-named Secret of its own namespace into the controller, which tags
    each run with the pushed adapter's digest (``run_tags``). Empty: the server needs no credentials."""

    def __post_init__(self) -> None:
        # The two lists are stored canonical (networks as CIDRs, registries in lower case).
        object.__setattr__(self, "allowed_url_networks", _networks(self.allowed_url_networks))
        object.__setattr__(self, "insecure_registries", _registries(self.insecure_registries))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(
                    f"{PREFIX}{name.upper()}={getattr(self, name)!r}: must be one of {', '.join(allowed)}"
                )
        if self.model_registry and not _model_registry_ok(self.model_registry):
            raise SettingsError(
                f"{PREFIX}MODEL_REGISTRY={self.model_registry!r}: must be a registry and optional path "
                "without scheme, tag or digest, e.g. registry.example/kaito-models"
            )
        _check_mlflow(self)
        self._check_numbers()

    def _check_numbers(self) -> None:
        if not 1 <= self.progress_interval_seconds <= 30:
            raise SettingsError(
                f"{PREFIX}PROGRESS_INTERVAL_SECONDS={self.progress_interval_seconds}: must be 1..30"
            )
        if not 1 <= self.inference_port <= 65535 or self.inference_port == TORCH_DIST_PORT:
            raise SettingsError(
                f"{PREFIX}INFERENCE_PORT={self.inference_port}: must be 1..65535 and not {TORCH_DIST_PORT}"
            )
        _check_quantities(self)
        if self.resync_seconds < 1:
            raise SettingsError(f"{PREFIX}RESYNC_SECONDS={self.resync_seconds}: must be >= 1")
        for name in (
            "backoff_limit",
            "active_deadline_seconds",
            "ttl_seconds_after_finished",
            "model_cache_max_gib",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()}={getattr(self, name)}: must be >= 0")

    def is_insecure_registry(self, image: str) -> bool:
        """Whether ``image``'s registry (``host[:port]`` exactly as the reference names it) is listed in
        insecure_registries, so the containers that pull or push it need ``--plain-http``."""
        try:
            registry = Reference.parse(image).registry.lower()
        except InvalidInputError:
            return False
        return registry in self.insecure_registries


def _check_mlflow(settings: Settings) -> None:
    """The tracking server's URL, the experiment's name and the Secret's name, as MLflow and Kubernetes
    take them."""
    uri = settings.mlflow_tracking_uri
    parts = urlsplit(uri)
    if uri and (parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in uri)):
        raise SettingsError(
            f"{PREFIX}MLFLOW_TRACKING_URI={uri!r}: must be empty (no tracking) or the http(s) URL of an "
            "MLflow tracking server, e.g. http://mlflow.mlflow.svc:5000"
        )
    if "@" in parts.netloc:  # the variable is visible in the Deployment and the Jobs
        raise SettingsError(
            f"{PREFIX}MLFLOW_TRACKING_URI: must hold no user or password; name a Secret in "
            f"{PREFIX}MLFLOW_CREDENTIALS_SECRET instead"
        )
    if not 0 < len(settings.mlflow_experiment) <= MLFLOW_EXPERIMENT_MAX:
        raise SettingsError(
            f"{PREFIX}MLFLOW_EXPERIMENT={settings.mlflow_experiment!r}: must be 1..{MLFLOW_EXPERIMENT_MAX} "
            "characters"
        )
    secret = settings.mlflow_credentials_secret
    if secret and not _SECRET_NAME.fullmatch(secret):
        raise SettingsError(
            f"{PREFIX}MLFLOW_CREDENTIALS_SECRET={secret!r}: must be empty or a Secret's name (lower-case "
            "letters, digits, '-' and '.', at most 253), e.g. mlflow-credentials"
        )


def _check_quantities(settings: Settings) -> None:
    """The train container's requests and limit are Kubernetes quantities, the limit not below the request."""
    values = {}
    for name in ("train_cpu_request", "train_memory_request", "train_memory_limit"):
        raw = getattr(settings, name)
        if name == "train_memory_limit" and not raw:
            continue
        match = _QUANTITY.fullmatch(raw)
        if not match:
            raise SettingsError(
                f"{PREFIX}{name.upper()}={raw!r}: must be a Kubernetes quantity, e.g. 2, 500m, 8Gi"
            )
        values[name] = float(match["number"]) * _SUFFIX.get(match["suffix"] or "", 1.0)
    if values.get("train_memory_limit", values["train_memory_request"]) < values["train_memory_request"]:
        raise SettingsError(
            f"{PREFIX}TRAIN_MEMORY_LIMIT={settings.train_memory_limit!r}: must be at least "
            f"{PREFIX}TRAIN_MEMORY_REQUEST ({settings.train_memory_request})"
        )


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    """ALLOWED_URL_NETWORKS as CIDRs."""
    networks = []
    for text in values:
        try:
            networks.append(parse_network(text))
        except ValueError:
            raise SettingsError(
                f"{PREFIX}ALLOWED_URL_NETWORKS={','.join(values)!r}: {text!r} is not an IP network; must be "
                "comma-separated CIDRs or addresses, e.g. 10.250.0.0/24,127.0.0.1"
            ) from None
    return tuple(networks)


def _registries(values: tuple[str, ...]) -> tuple[str, ...]:
    """INSECURE_REGISTRIES in lower case, each ``host[:port]``."""
    registries = tuple(r.strip().lower() for r in values)
    for registry in registries:
        match = _REGISTRY.fullmatch(registry)
        if not match or (match["port"] and not 1 <= int(match["port"]) <= 65535):
            raise SettingsError(
                f"{PREFIX}INSECURE_REGISTRIES={','.join(values)!r}: {registry!r} is not a registry; must be "
                "comma-separated host or host:port (no scheme, no path), "
                "e.g. 10.250.0.1:5000,registry.local"
            )
    return registries


def _model_registry_ok(prefix: str) -> bool:
    """``host[:port][/path]``: a reference to a repository under it must parse, with no tag of its own."""
    try:
        ref = Reference.parse(f"{prefix}/probe:tag")
    except InvalidInputError:
        return False
    return ref.tag == "tag" and not ref.digest and "://" not in prefix


def _convert(name: str, raw: str, default: Any) -> Any:
    key = PREFIX + name.upper()
    if isinstance(default, tuple):  # comma-separated; empty items (and an empty variable) are dropped
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise SettingsError(f"{key}={raw!r}: must be true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{key}={raw!r}: must be an integer") from None
    return raw


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Settings from ``KAITO_TUNE_*`` variables; unset ones keep their defaults."""
    base = Settings()
    values = {
        f.name: _convert(f.name, env[PREFIX + f.name.upper()], getattr(base, f.name))
        for f in fields(Settings)
        if PREFIX + f.name.upper() in env
    }
    return replace(base, **values)
