"""Tuning Workspaces: validate -> training config -> CPU data check -> GPU node -> training Job -> status.

One idempotent ``reconcile`` does everything; kopf calls it on Workspace create/update/resume and on
every event of the Jobs, pods and NodeClaims the controller labelled (``kaito.sh/workspace``), so status
follows Job state without polling. Names are deterministic and creates adopt what already exists, so a
controller killed mid-reconcile and restarted makes no duplicates. Status writes are conditional on the
Workspace's resourceVersion and retried on conflict, and skipped when nothing changed.

    Workspace --> <ws>-training-config (ConfigMap) --> <ws>-data (Job, CPU)
              --> NodeClaim (auto-provisioning) or an own node --> <ws>-tuning (SA, Role, RoleBinding)
              --> <ws>-results (PVC) --> <ws> (Job) --> status.tuning {phase, data, adapter, ...}
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import yaml

from contract.problems import Problem, errors
from contract.training_config import ROOT
from contract.workspace import GROUP, Workspace, parse_workspace
from tuning_controller import conditions as c
from tuning_controller import metrics
from tuning_controller import status as st
from tuning_controller.gpu_fit import training_shape
from tuning_controller.kube import Kube, KubeError, retry_on_conflict
from tuning_controller.nodes import choose_node, nodeclaim_state
from tuning_controller.render import sku_gpus, training_config_doc
from tuning_controller.render.configmap import CONFIG_KEY, render_training_configmap
from tuning_controller.render.job import (
    REVISION_ANNOTATION,
    data_job_name,
    render_data_job,
    render_results_claim,
    render_training_job,
    revision,
    training_job_name,
    uses_results_claim,
)
from tuning_controller.render.meta import WORKSPACE_LABEL
from tuning_controller.render.model import render_model_cache_claim, workspace_model_source
from tuning_controller.render.nodeclaim import (
    NODECLAIM_API_VERSION,
    nodeclaim_name,
    provisions_node,
    render_nodeclaim,
)
from tuning_controller.render.rbac import render_progress_rbac
from tuning_controller.settings import Settings, settings_from_env
from tuning_controller.validation import validate_workspace

log = logging.getLogger("kaito-tune.tuning")
KIND = "tuning"
MANAGED = {"app.kubernetes.io/managed-by": "kaito-tune", WORKSPACE_LABEL: kopf.PRESENT}


@dataclass
class Controller:
    """What a reconcile needs besides the Workspace: the client, the settings, an event poster."""

    kube: Kube
    settings: Settings
    post_event: Callable[[Mapping[str, Any], str, str, str], None]


# Read once at import: kopf's decorators fix timer intervals and optional deletes at registration.
STARTUP_SETTINGS = settings_from_env(os.environ)
_controller: Controller | None = None
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
# uids of Workspaces whose delete handler ran: a reconcile that read the Workspace just before the
# deletion and waited for its lock must not create a NodeClaim again after the release.
_deleted: set[str] = set()


def controller() -> Controller:
    """The process's Controller, built on first use (handler threads race for it: one wins)."""
    global _controller
    with _locks_guard:
        if _controller is None:
            _controller = Controller(
                Kube.from_environment(os.environ.get("KUBECONFIG") or None),
                STARTUP_SETTINGS,
                _kopf_event,
            )
        return _controller


def _kopf_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(obj), type=type_, reason=reason, message=message[:1024])


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class Waiting(Exception):
    """Reconcile cannot go on until the world changes (nodes appear); kopf retries after ``delay``."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


# ---- reading -----------------------------------------------------------------------------------


def read_user_config(ctl: Controller, ws: Workspace) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The parsed training_config.yaml of the ConfigMap named by tuning.config (None without one)."""
    name = ws.tuning.config
    if not name:
        return None, []
    cm = ctl.kube.get("v1", "ConfigMap", ws.namespace, name)
    if cm is None:
        return None, [
            Problem(
                "tuning.config",
                f"ConfigMap {name!r} not found in namespace {ws.namespace}",
                name,
                f"create it with the key {CONFIG_KEY}, or remove tuning.config to use the method's template",
            )
        ]
    text = (cm.get("data") or {}).get(CONFIG_KEY)
    if text is None:
        return None, [Problem("tuning.config", f"ConfigMap {name!r} has no key {CONFIG_KEY}", name)]
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [Problem(f"configmap/{name}:{CONFIG_KEY}", f"is not valid YAML: {exc}", None)]
    if not isinstance(doc, dict) or ROOT not in doc:
        return None, [
            Problem(f"configmap/{name}:{CONFIG_KEY}", f"must be a mapping with the key {ROOT}", None)
        ]
    return doc, []


def _pods(ctl: Controller, namespace: str, job: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if job is None:
        return []
    selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
    return ctl.kube.list("v1", "Pod", namespace, label_selector=selector)


def _revision_of(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)


# ---- writing -----------------------------------------------------------------------------------


def create_or_get(ctl: Controller, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Create; when the name exists already (a restart, a race), adopt the existing object."""
    try:
        return ctl.kube.create(obj)
    except KubeError as err:
        if not err.already_exists:
            raise
    meta = obj["metadata"]
    found = ctl.kube.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
    if found is None:  # deleted in between: try once more
        return ctl.kube.create(obj)
    return found


def _create_or_apply(ctl: Controller, obj: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return ctl.kube.create(obj)
    except KubeError as err:
        if not err.already_exists:
            raise
    return ctl.kube.apply(obj)


def _replace_job(ctl: Controller, ws_obj: Mapping[str, Any], job: Mapping[str, Any], why: str) -> None:
    meta = job["metadata"]
    ctl.kube.delete(
        "batch/v1", "Job", meta["namespace"], meta["name"], propagation="Background", uid=meta["uid"]
    )
    ctl.kube.wait_gone("batch/v1", "Job", meta["namespace"], meta["name"], uid=meta["uid"], timeout=60)
    ctl.post_event(ws_obj, "Normal", "JobReplaced", f"deleted Job {meta['name']}: {why}")


def write_status(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    new_conditions: list[dict[str, Any]],
    section: Mapping[str, Any],
    state: str,
    *,
    key: str,
    announce: bool = False,
) -> dict[str, Any]:
    """Merge ``section`` into status.<key> (``tuning`` or ``inference``) and set the conditions and
    status.state; conditional on resourceVersion, re-read and re-applied on conflict, skipped when
    nothing would change. Returns the Workspace.

    A tuning phase of the same revision only moves forward (``status.moves_back``): a write computed
    from Job and pod reads older than the stored status is dropped, so the status never flaps. With
    ``announce``, an Event (reason: the phase) is posted once, by the write that changed the phase."""
    meta = ws_obj["metadata"]
    api_version = ctl.settings.workspace_api_version
    current: Mapping[str, Any] | None = ws_obj

    def attempt() -> dict[str, Any]:
        nonlocal current
        obj = current or ctl.kube.get(api_version, "Workspace", meta["namespace"], meta["name"])
        current = None  # a retry re-reads
        if obj is None:
            return {}
        status = obj.get("status") or {}
        old_section = status.get(key) or {}
        phase, old_phase = section.get("phase"), old_section.get("phase")
        same_revision = section.get("revision", old_section.get("revision")) == old_section.get("revision")
        if key == "tuning" and phase and same_revision and st.moves_back(old_phase, phase):
            return dict(obj)
        merged_conditions = c.set_conditions(status.get("conditions"), new_conditions)
        changed = {k: v for k, v in section.items() if old_section.get(k) != v}
        if (
            not changed
            and c.same_conditions(status.get("conditions"), merged_conditions)
            and status.get("state") == state
        ):
            return dict(obj)
        patch = {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": {"conditions": merged_conditions, key: changed, "state": state},
        }
        written = ctl.kube.merge_patch(
            api_version, "Workspace", meta["namespace"], meta["name"], patch, subresource="status"
        )
        if announce and phase and phase != old_phase:
            warning = phase in (st.FAILED, st.INVALID)
            ctl.post_event(obj, "Warning" if warning else "Normal", phase, section.get("message", ""))
        return written

    return retry_on_conflict(attempt)


# ---- the reconcile -----------------------------------------------------------------------------


def reconcile(ctl: Controller, ws_obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> str | None:
    """Bring the Workspace's objects and status in line with its spec; returns status.tuning.phase
    (None when the Workspace's delete handler already ran).

    Raises kopf.PermanentError for an invalid spec and ``Waiting`` while no GPU node is available.
    """
    key = _key(ws_obj)
    with _lock(key):
        if ws_obj["metadata"].get("uid") in _deleted:
            return None
        return _locked_reconcile(ctl, ws_obj, old, key)


def _locked_reconcile(
    ctl: Controller, ws_obj: Mapping[str, Any], old: Mapping[str, Any] | None, key: str
) -> str:
    with metrics.reconciling(KIND) as outcome:
        log.debug("reconcile %s", key)
        phase = _reconcile(ctl, ws_obj, old, outcome)
        metrics.set_state(KIND, key, st.state_for(phase))
        return phase


def _key(ws_obj: Mapping[str, Any]) -> str:
    return f"{ws_obj['metadata']['namespace']}/{ws_obj['metadata']['name']}"


def _invalid(ctl: Controller, ws_obj: Mapping[str, Any], problems: list[Problem], reason: str) -> str:
    generation = ws_obj["metadata"].get("generation", 0)
    message = "; ".join(str(p) for p in problems)
    now = c.now_rfc3339()
    conds = [
        c.condition(c.RESOURCE_READY, False, reason, message, generation, now),
        c.condition(c.WORKSPACE_SUCCEEDED, False, reason, message, generation, now),
    ]
    state = st.state_for(st.INVALID)
    section = {"phase": st.INVALID, "message": message[: st.MESSAGE_MAX]}
    write_status(ctl, ws_obj, conds, section, state, key="tuning", announce=True)
    metrics.set_state(KIND, _key(ws_obj), state)  # the reconcile raises after this
    return st.INVALID


def _reconcile(
    ctl: Controller, ws_obj: Mapping[str, Any], old: Mapping[str, Any] | None, outcome: dict
) -> str:
    settings = ctl.settings
    generation = ws_obj["metadata"].get("generation", 0)
    ws, _ = parse_workspace(ws_obj)
    namespace = ws.namespace
    if old is not None:  # the API server's CEL rules refuse these first; this is the second line
        alone = {
            str(p) for p in validate_workspace(ws_obj, allowed_url_networks=settings.allowed_url_networks)
        }
        with_old = validate_workspace(ws_obj, old, allowed_url_networks=settings.allowed_url_networks)
        immutable = [p for p in errors(with_old) if str(p) not in alone]
        if immutable:
            outcome["result"] = "invalid"
            _invalid(ctl, ws_obj, immutable, c.REASON_IMMUTABLE_FIELD)
            raise kopf.PermanentError("; ".join(str(p) for p in immutable))
    user_config, config_problems = read_user_config(ctl, ws)
    if config_problems and _finished_unchanged(ws_obj):
        # The config was copied into <ws>-training-config when the training began; a finished
        # Workspace whose spec did not change since keeps its outcome (and its adapter digest).
        return ws_obj["status"]["tuning"]["phase"]
    problems = config_problems + errors(
        validate_workspace(
            ws_obj,
            allowed_url_networks=settings.allowed_url_networks,
            training_config=user_config,
            model_registry=settings.model_registry,
        )
    )
    if problems:
        outcome["result"] = "invalid"
        _invalid(ctl, ws_obj, problems, c.REASON_INVALID_SPEC)
        raise kopf.PermanentError("; ".join(str(p) for p in problems))
    doc = training_config_doc(ws, user_config)
    rev = revision(ws, doc)
    now = c.now_rfc3339()
    known_rev = ((ws_obj.get("status") or {}).get("tuning") or {}).get("revision")
    fresh: dict[str, Any] = {"revision": rev, "jobName": training_job_name(ws)}
    if known_rev and known_rev != rev:  # a changed spec: forget the old results, stop the old training
        fresh.update(
            {"data": None, "adapter": None, "progress": None, "startTime": None, "completionTime": None}
        )
        old_job = ctl.kube.get("batch/v1", "Job", namespace, training_job_name(ws))
        if old_job is not None and _revision_of(old_job) != rev:
            _replace_job(
                ctl, ws_obj, old_job, f"the Workspace changed (revision {_revision_of(old_job)} -> {rev})"
            )

    # 1. Data and model first, on CPU. A passed check of this revision stays in status (its Job may be
    # gone), with the weights' reference it pinned.
    known = ((ws_obj.get("status") or {}).get("tuning") or {}) if known_rev == rev else {}
    stored, model = known.get("data"), known.get("model")
    if not (stored and stored.get("ok") and stored.get("sha256") and model and model.get("reference")):
        stored, model, stopped = _check_data(ctl, ws_obj, ws, rev, known_rev, user_config, fresh)
        if stopped:
            return stopped
    summary = stored

    job = ctl.kube.get("batch/v1", "Job", namespace, training_job_name(ws))
    if job is not None and _revision_of(job) != rev:
        _replace_job(ctl, ws_obj, job, f"the Workspace changed (revision {_revision_of(job)} -> {rev})")
        job = None
    if job is None and known.get("phase") in (st.SUCCEEDED, st.FAILED):
        # This revision's Job finished and is gone (its TTL, or deleted by hand). The outcome stays in
        # status; training again would buy a GPU node and move the pushed tag. A changed spec retrains.
        _release_nodeclaim(ctl, ws, ws_obj)
        return known["phase"]

    # 2. GPU nodes, only now, and 3. the training Job with its least-privilege progress identity and
    # results claim. An existing Job has its node already.
    gpus_conds: list[dict[str, Any]] = []
    if job is None:
        gpus, gpus_conds = _gpu_nodes(ctl, ws_obj, ws, doc, generation, now, summary, fresh)
        for obj in render_progress_rbac(ws):
            ctl.kube.apply(obj)
        if uses_results_claim(ws, settings):
            create_or_get(ctl, render_results_claim(ws, settings))
        if settings.model_cache == "pvc":
            create_or_get(ctl, render_model_cache_claim(namespace, settings))
        job = create_or_get(
            ctl,
            render_training_job(
                ws,
                settings,
                rev,
                data_sha256=summary["sha256"],
                gpus=gpus,
                model_reference=model["reference"],
            ),
        )
    result = st.job_outcome(job, _pods(ctl, namespace, job))
    phase = st.training_phase(result)
    tuning: dict[str, Any] = {
        **fresh,
        "phase": phase,
        "message": result.message,
        "data": summary,
        "model": model,
        "startTime": result.start_time,
        "completionTime": result.completion_time,
    }
    digest = st.adapter_digest(result)
    if ws.tuning.output.image and digest:
        tuning["adapter"] = {"image": ws.tuning.output.image, "digest": digest}
    if result.phase == st.SUCCEEDED:
        where = f"{ws.tuning.output.image}@{digest}" if digest else "the output volume"
        tuning["message"] = f"adapter written to {where}"
    if result.phase in (st.SUCCEEDED, st.FAILED):
        _release_nodeclaim(ctl, ws, ws_obj)
    resource = c.condition(
        c.RESOURCE_READY,
        True,
        c.REASON_RESOURCE_READY,
        "GPU node and Job resources are ready",
        generation,
        now,
    )
    conds = [*gpus_conds, resource, *st.training_conditions(result, generation, now)]
    write_status(ctl, ws_obj, conds, tuning, st.state_for(phase), key=KIND, announce=True)
    return phase


def _finished_unchanged(ws_obj: Mapping[str, Any]) -> bool:
    """Succeeded or Failed, and the outcome is of the Workspace's current generation."""
    status = ws_obj.get("status") or {}
    if (status.get("tuning") or {}).get("phase") not in st.TERMINAL:
        return False
    done = next((x for x in status.get("conditions") or [] if x.get("type") == c.WORKSPACE_SUCCEEDED), {})
    return done.get("observedGeneration") == ws_obj["metadata"].get("generation")


def _check_data(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    ws: Workspace,
    rev: str,
    known_rev: str | None,
    user_config: Mapping[str, Any] | None,
    fresh: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The pre-flight Job and its verdict: (data summary, pinned model, "") once both passed, else
    ({}, {}, phase) with the status written. The Job goes first (latency); its pod waits for the
    ConfigMap if need be."""
    generation, now = ws_obj["metadata"].get("generation", 0), c.now_rfc3339()
    data_job = _ensure_job(ctl, ws_obj, render_data_job(ws, ctl.settings, rev), exists=known_rev == rev)
    if known_rev is None:  # first sight: a plain create is cheaper for the API server than an apply
        _create_or_apply(ctl, render_training_configmap(ws, user_config))
    elif known_rev != rev:
        ctl.kube.apply(render_training_configmap(ws, user_config))
    pods = _pods(ctl, ws.namespace, data_job) if _job_settled(data_job) else []
    data = st.job_outcome(data_job, pods)
    if data.phase not in (st.SUCCEEDED, st.FAILED):
        message = f"checking the data in Job {data_job_name(ws)}: {data.message}"
        conds = [
            c.condition(c.RESOURCE_READY, c.UNKNOWN, c.REASON_DATA_CHECK, message, generation, now),
            c.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, c.REASON_DATA_CHECK, message, generation, now),
        ]
        tuning = {**fresh, "phase": st.CHECKING_DATA, "message": message}
        write_status(ctl, ws_obj, conds, tuning, st.state_for(st.CHECKING_DATA), key=KIND)
        return {}, {}, st.CHECKING_DATA
    summary = st.data_summary(data)
    model = st.model_fetch(data)
    if (
        data.phase == st.FAILED
        or not summary
        or not summary.get("ok")
        or not summary.get("sha256")
        or not model
    ):
        message = st.data_failure_message(data, summary)
        reason = c.REASON_DATA_INVALID
        if st.model_fetch_failed(data):
            reason = c.REASON_MODEL_UNAVAILABLE
            source = workspace_model_source(ws.tuning.preset, ctl.settings)
            secret = source.pull_secret or source.token_secret
            message += f" (source {source.reference}, " + (
                f"credentials from Secret {secret})" if secret else "no credentials)"
            )
        _release_nodeclaim(ctl, ws, ws_obj)
        conds = [c.condition(c.WORKSPACE_SUCCEEDED, False, reason, message, generation, now)]
        tuning = {**fresh, "phase": st.FAILED, "message": message, "data": summary, "model": model}
        write_status(ctl, ws_obj, conds, tuning, st.state_for(st.FAILED), key=KIND, announce=True)
        return {}, {}, st.FAILED
    return summary, model, ""


def _ensure_job(
    ctl: Controller, ws_obj: Mapping[str, Any], job: dict[str, Any], *, exists: bool
) -> dict[str, Any]:
    """The Job as rendered: read when the status says it was created, else created (adopting a
    namesake); one of another revision is replaced."""
    meta = job["metadata"]
    found = ctl.kube.get("batch/v1", "Job", meta["namespace"], meta["name"]) if exists else None
    if found is None:
        found = create_or_get(ctl, job)
    if _revision_of(found) != _revision_of(job):
        _replace_job(ctl, ws_obj, found, "the Workspace changed: checking the data again")
        found = create_or_get(ctl, job)
    return found


def _job_settled(job: Mapping[str, Any]) -> bool:
    status = job.get("status") or {}
    return bool(status.get("conditions") or status.get("failed") or status.get("succeeded"))


def _need_gib(ws: Workspace, doc: Mapping[str, Any]) -> float | None:
    from presets.catalog import UnknownName, get_model

    try:
        preset = get_model(ws.tuning.preset.name)
    except UnknownName:
        return None
    return training_shape(doc, ws.tuning.method.lower(), preset).estimate(preset).total_gib


def _gpu_nodes(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    ws: Workspace,
    doc: Mapping[str, Any],
    generation: int,
    now: str,
    summary: Mapping[str, Any],
    fresh: Mapping[str, Any],
) -> tuple[int, list[dict[str, Any]]]:
    """GPUs for the training pod, or ``Waiting`` (status written) while none are available."""
    settings = ctl.settings
    if provisions_node(ws, settings):
        claim = ctl.kube.get(NODECLAIM_API_VERSION, "NodeClaim", None, nodeclaim_name(ws))
        if claim is None:
            claim = create_or_get(ctl, render_nodeclaim(ws, settings))
            ctl.post_event(
                ws_obj, "Normal", "NodeClaimCreated", f"requested a {ws.resource.instance_type} node"
            )
        ready, message = nodeclaim_state(claim)
        reason = c.REASON_NODECLAIMS_READY if ready else c.REASON_NODECLAIM_NOT_READY
        cond = c.condition(c.NODECLAIM_READY, ready, reason, message, generation, now)
        if not ready:
            _waiting_status(ctl, ws_obj, [cond], message, generation, now, summary, fresh)
            raise Waiting(message, settings.node_retry_seconds)
        return sku_gpus(ws), [cond]
    nodes = ctl.kube.list("v1", "Node")
    choice = choose_node(nodes, ws.resource.label_selector if ws.resource else None, _need_gib(ws, doc))
    if not choice.ok:
        _waiting_status(ctl, ws_obj, [], choice.message, generation, now, summary, fresh)
        raise Waiting(choice.message, settings.node_retry_seconds)
    return choice.gpus, []


def _waiting_status(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    conds: list[dict[str, Any]],
    message: str,
    generation: int,
    now: str,
    summary: Mapping[str, Any],
    fresh: Mapping[str, Any],
) -> None:
    conds = [
        *conds,
        c.condition(c.RESOURCE_READY, False, c.REASON_NO_MATCHING_NODES, message, generation, now),
        c.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, c.REASON_NO_MATCHING_NODES, message, generation, now),
    ]
    tuning = {**fresh, "phase": st.WAITING_FOR_NODES, "message": message, "data": dict(summary)}
    state = st.state_for(st.WAITING_FOR_NODES)
    write_status(ctl, ws_obj, conds, tuning, state, key=KIND, announce=True)
    metrics.set_state(KIND, _key(ws_obj), state)  # the reconcile raises Waiting after this


def _release_nodeclaim(ctl: Controller, ws: Workspace, ws_obj: Mapping[str, Any]) -> None:
    """Delete the Workspace's NodeClaim: the GPU node costs money once the Job is done."""
    if not ctl.settings.auto_provisioning:
        return
    name = nodeclaim_name(ws)
    if ctl.kube.delete(NODECLAIM_API_VERSION, "NodeClaim", None, name):
        ctl.post_event(
            ws_obj, "Normal", "NodeClaimReleased", f"deleted NodeClaim {name}: the GPU node is released"
        )


# ---- kopf handlers -----------------------------------------------------------------------------


def is_tuning(body: Mapping[str, Any], **_: Any) -> bool:
    return bool(body.get("tuning"))


def _run(body: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return  # going away: owner references and the delete handler clean up
    try:
        reconcile(controller(), body, old)
    except Waiting as wait:
        raise kopf.TemporaryError(str(wait), delay=wait.delay) from None


@kopf.on.create(GROUP, "workspaces", when=is_tuning)
def workspace_create(body: kopf.Body, **_: Any) -> None:
    _run(body)


@kopf.on.update(GROUP, "workspaces", when=is_tuning)
def workspace_update(body: kopf.Body, old: Mapping[str, Any], new: Mapping[str, Any], **_: Any) -> None:
    _run(body, old=_with_identity(old, body))


@kopf.on.resume(GROUP, "workspaces", when=is_tuning)
def workspace_resume(body: kopf.Body, **_: Any) -> None:
    _run(body)


def _with_identity(old: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's ``old`` is the stored essence: give it back apiVersion/kind/metadata for validation."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body["metadata"]),
        **old,
    }


def _owner_workspace(ctl: Controller, body: Mapping[str, Any]) -> dict[str, Any] | None:
    labels = body.get("metadata", {}).get("labels") or {}
    name = labels.get(WORKSPACE_LABEL)
    namespace = labels.get("kaito.sh/workspacenamespace") or body.get("metadata", {}).get("namespace")
    if not name or not namespace:
        return None
    ws = ctl.kube.get(ctl.settings.workspace_api_version, "Workspace", namespace, name)
    if ws is None or not ws.get("tuning") or ws["metadata"].get("deletionTimestamp"):
        return None
    return ws


def _follow(body: Mapping[str, Any], logger: logging.Logger | Any) -> None:
    """A Job, pod or NodeClaim of a Workspace changed: reconcile that Workspace (errors are logged;
    the next event or the Workspace's own handlers retry)."""
    ctl = controller()
    try:
        ws = _owner_workspace(ctl, body)
        if ws is not None:
            reconcile(ctl, ws)
    except (Waiting, kopf.PermanentError):
        pass
    except KubeError as err:
        logger.warning("reconcile after %s event failed: %s", body.get("kind"), err)


def _pod_has_news(body: Mapping[str, Any], **_: Any) -> bool:
    """Pending pods (waiting for a node) change nothing a Workspace shows; skip them cheaply."""
    return (body.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def _job_has_news(body: Mapping[str, Any], **_: Any) -> bool:
    """Only a finished or (un)suspended Job changes what status shows; running pods report through
    pod events. Counters the Job controller bumps while pods start are skipped."""
    conds = (body.get("status") or {}).get("conditions") or []
    return bool(conds) or bool((body.get("spec") or {}).get("suspend"))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED, when=_job_has_news)
def tuning_job_event(body: kopf.Body, type: str, logger: Any, **_: Any) -> None:
    if type is not None:  # None: the initial listing; resume handlers cover it
        _follow(body, logger)


@kopf.on.event("", "v1", "pods", labels=MANAGED, when=_pod_has_news)
def tuning_pod_event(body: kopf.Body, type: str, logger: Any, **_: Any) -> None:
    if type is not None:
        _follow(body, logger)


@kopf.on.event("karpenter.sh", "v1", "nodeclaims", labels=MANAGED)
def tuning_nodeclaim_event(body: kopf.Body, type: str, logger: Any, **_: Any) -> None:
    if type is not None and type != "DELETED":
        _follow(body, logger)


def _waiting_for_nodes(body: Mapping[str, Any], **_: Any) -> bool:
    return ((body.get("status") or {}).get("tuning") or {}).get("phase") == st.WAITING_FOR_NODES


@kopf.timer(
    GROUP,
    "workspaces",
    interval=STARTUP_SETTINGS.node_retry_seconds,
    when=_waiting_for_nodes,
)
def workspace_wait_for_nodes(body: kopf.Body, logger: Any, **_: Any) -> None:
    """Own nodes send no event the Workspace could follow: look again while it waits for one."""
    try:
        _run(body)
    except kopf.TemporaryError as wait:
        logger.debug("still waiting: %s", wait)


def _in_progress(body: Mapping[str, Any], **_: Any) -> bool:
    phase = ((body.get("status") or {}).get("tuning") or {}).get("phase")
    return bool(phase) and phase not in (*st.TERMINAL, st.INVALID, st.WAITING_FOR_NODES)


@kopf.timer(
    GROUP,
    "workspaces",
    interval=STARTUP_SETTINGS.resync_seconds,
    idle=STARTUP_SETTINGS.resync_seconds,
    when=_in_progress,
)
def workspace_resync(body: kopf.Body, logger: Any, **_: Any) -> None:
    """A lost Job or pod event (an API blip at completion) must not leave a Workspace Running and its
    GPU node billing: a Workspace in progress is reconciled again once nothing happened to it for
    resync_seconds (the idle time), so a lost event costs at most that long."""
    try:
        _run(body)
    except kopf.TemporaryError as wait:
        logger.debug("still waiting: %s", wait)


@kopf.on.delete(GROUP, "workspaces", when=is_tuning, optional=not STARTUP_SETTINGS.auto_provisioning)
def workspace_delete(body: kopf.Body, **_: Any) -> None:
    """Owner references remove Jobs, ConfigMap, RBAC and the claim; the cluster-scoped NodeClaim is
    deleted here. Without auto-provisioning the handler is optional: no finalizer, so a Workspace never
    waits for the controller to be deleted."""
    ws, _ = parse_workspace(body)
    ctl = controller()
    key = _key(body)
    with _lock(key):  # after any reconcile in flight, and before any queued one (which then stops)
        _deleted.add(body["metadata"]["uid"])
        _release_nodeclaim(ctl, ws, body)
    metrics.set_state(KIND, key, None)
