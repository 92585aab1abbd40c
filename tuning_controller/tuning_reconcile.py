"""The tuning reconcile as a pure function: a Workspace and what the controller saw of its children in,
the writes to make and the status to write out.

    target = tuning_target(ws_obj, old, user_config, settings, now)   # a Plan when the spec is refused
    step = decide(target, seen)    # Read(what) until ``seen`` holds what the decision needs, then a Plan

The shell (tuning_controller.handlers.runtime) reads what a ``Read`` names into ``seen`` and asks again.
What the stored status answers is not read: a Workspace seen for the first time costs no read, only its
writes (data Job, training-config ConfigMap, status).

    Workspace --> <ws>-training-config (ConfigMap) --> <ws>-data (Job, CPU)
              --> NodeClaim (auto-provisioning) or an own node --> <ws>-tuning (SA, Role, RoleBinding)
              --> <ws>-results (PVC) --> <ws> (Job) --> status.tuning {phase, data, adapter, ...}
    resource.count > 1: <ws>-workers (headless Service) before the Indexed Job <ws>, and <ws>-push
    (Job) once it completed (image output)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from contract.pod import CONFIG_KEY
from contract.problems import Problem, errors
from contract.training_config import ROOT, Method
from contract.workspace import PresetSpec, Workspace, parse_workspace
from tuning_controller import conditions as c
from tuning_controller import status as st
from tuning_controller.gpu_fit import training_shape
from tuning_controller.nodes import choose_node, nodeclaims_state, release_nodeclaims
from tuning_controller.plan import Event, Plan, Read, Result, StatusUpdate, Taken, Verb, Write
from tuning_controller.render import node_count, sku_gpus
from tuning_controller.render.configmap import (
    TrainingConfig,
    choose_training_config,
    render_training_configmap,
)
from tuning_controller.render.input_urls import render_urls_secret
from tuning_controller.render.job import (
    PUSH,
    REVISION_ANNOTATION,
    data_job_name,
    needs_push_job,
    pod_host,
    push_job_name,
    queue_of,
    render_data_job,
    render_push_job,
    render_rendezvous_service,
    render_results_claim,
    render_training_job,
    results_claim_name,
    revision,
    training_job_name,
    uses_jobset,
    uses_results_claim,
)
from tuning_controller.render.meta import NAME_MAX
from tuning_controller.render.model import render_model_cache_claim, workspace_model_source
from tuning_controller.render.nodeclaim import (
    nodeclaim_names,
    provisions_node,
    render_nodeclaim,
)
from tuning_controller.render.rbac import render_progress_rbac
from tuning_controller.settings import Settings
from tuning_controller.validation import immutability_problems, validate_workspace

# What ``decide`` may ask to see (``Read.what``, the keys of ``seen``). A Job or NodeClaim is seen as
# the object when the Workspace owns it, None when there is none, and ``Taken`` when its name is held by
# an object the Workspace does not own.
DATA_JOB = "data_job"  # the pre-flight Job <ws>-data
DATA_PODS = "data_pods"  # its pods
JOB = "job"  # the training Job <ws>
JOB_PODS = "job_pods"  # its pods
NODECLAIM = "nodeclaim"  # the Workspace's NodeClaims, one per node (auto-provisioning): a tuple
NODES = "nodes"  # every Node (own nodes)
WORKLOAD = "workload"  # Kueue's Workload of the training Job (None: none, or Kueue is not installed)
PUSH_JOB = "push_job"  # the multi-node training's push Job <ws>-push
PUSH_PODS = "push_pods"  # its pods
# Only a successful data check of the current revision lets the training start.
_RESET = {
    "data": None,
    "adapter": None,
    "progress": None,
    "evaluation": None,
    "tracking": None,  # the old revision's MLflow run stays in MLflow; status names the current one
    "startTime": None,
    "completionTime": None,
}


@dataclass(frozen=True)
class Target:
    """A valid tuning Workspace with what every decision about it needs."""

    ws_obj: Mapping[str, Any]
    ws: Workspace
    settings: Settings
    config: TrainingConfig  # the training config the Jobs use
    rev: str  # its revision: what decides the result
    stamp: c.Stamp

    @property
    def stored(self) -> Mapping[str, Any]:
        """status.tuning as the Workspace carries it."""
        return (self.ws_obj.get("status") or {}).get("tuning") or {}

    @property
    def known_rev(self) -> str | None:
        return self.stored.get("revision")

    @property
    def known(self) -> Mapping[str, Any]:
        """status.tuning when it is about the current revision, else nothing."""
        return self.stored if self.known_rev == self.rev else {}

    @property
    def fresh(self) -> dict[str, Any]:
        """What every status.tuning write of this revision carries; a new revision forgets the old
        results."""
        fresh: dict[str, Any] = {"revision": self.rev, "jobName": training_job_name(self.ws)}
        return {**fresh, **_RESET} if self.known_rev and self.known_rev != self.rev else fresh


class _Unseen(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _look(seen: Mapping[str, Any], what: str) -> Any:
    if what not in seen:
        raise _Unseen(what)
    return seen[what]


def _own(seen_value: Any) -> Any:
    """An observation as the Workspace's object: a name held by another's (``Taken``) is no object of
    its own. A write to that name stops the plan in the shell; the GPU steps look first (``_taken``)."""
    return None if isinstance(seen_value, Taken) else seen_value


def _taken(t: Target, taken: Taken) -> Plan:
    return st.taken_plan(st.KIND, t.ws_obj, taken, t.stamp, float(t.settings.node_retry_seconds))


def revision_of(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)


# ---- the spec ----------------------------------------------------------------------------------


def user_config_of(
    name: str, namespace: str, config_map: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The parsed training_config.yaml of the ConfigMap ``name`` that tuning.config names, as read (None:
    no such ConfigMap), with what is wrong with it."""
    if config_map is None:
        hint = f"create it with the key {CONFIG_KEY}, or remove tuning.config to use the method's template"
        message = f"ConfigMap {name!r} not found in namespace {namespace}"
        return None, [Problem("tuning.config", message, name, hint)]
    text = (config_map.get("data") or {}).get(CONFIG_KEY)
    if text is None:
        return None, [Problem("tuning.config", f"ConfigMap {name!r} has no key {CONFIG_KEY}", name)]
    where = f"configmap/{name}:{CONFIG_KEY}"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [Problem(where, f"is not valid YAML: {exc}", None)]
    if not isinstance(doc, dict) or ROOT not in doc:
        return None, [Problem(where, f"must be a mapping with the key {ROOT}", None)]
    return doc, []


def _invalid(problems: list[Problem], reason: str, stamp: c.Stamp) -> Plan:
    message = "; ".join(str(p) for p in problems)
    update = st.invalid_update(message, reason, stamp)
    return Plan(st.INVALID, status=update, result=Result.INVALID, why=message)


def finished_unchanged(ws_obj: Mapping[str, Any]) -> bool:
    """Succeeded or Failed, and the outcome is of the Workspace's current generation."""
    status = ws_obj.get("status") or {}
    if (status.get("tuning") or {}).get("phase") not in st.TERMINAL:
        return False
    done = c.find(status.get("conditions"), c.WORKSPACE_SUCCEEDED) or {}
    return done.get("observedGeneration") == ws_obj["metadata"].get("generation")


def tuning_target(
    ws_obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    user_config: tuple[dict[str, Any] | None, list[Problem]],
    settings: Settings,
    now: str,
) -> Target | Plan:
    """The Workspace checked: a Target, or the Plan that refuses it. ``old`` (an update) adds KAITO's
    update rules: the API server's CEL rules refuse those changes first, this is the second line.
    ``user_config`` is ``user_config_of`` (None, [] without tuning.config)."""
    stamp = c.Stamp(int(ws_obj["metadata"].get("generation") or 0), now)
    ws, _ = parse_workspace(ws_obj)
    if old is not None:
        immutable = immutability_problems(ws, parse_workspace(old)[0])
        if immutable:
            return _invalid(immutable, c.REASON_IMMUTABLE_FIELD, stamp)
    config, config_problems = user_config
    if config_problems and finished_unchanged(ws_obj):
        # The config was copied into <ws>-training-config when the training began; a finished
        # Workspace whose spec did not change since keeps its outcome (and its adapter digest).
        return Plan(ws_obj["status"]["tuning"]["phase"])
    tuning = ws.require_tuning()
    chosen = choose_training_config(tuning, config) if Method.parse(tuning.method) else None
    found = validate_workspace(
        ws_obj,
        allowed_url_networks=settings.allowed_url_networks,
        training_config=chosen or config,
        model_registry=settings.model_registry,
    )
    problems = config_problems + errors(found) + multi_node_problems(ws, settings)
    if problems:
        return _invalid(problems, c.REASON_INVALID_SPEC, stamp)
    assert chosen is not None  # a known method (validated), and tuning.config was read (else config_problems)
    return Target(ws_obj, ws, settings, chosen, revision(ws, chosen.doc), stamp)


def multi_node_problems(ws: Workspace, settings: Settings) -> list[Problem]:
    """What resource.count > 1 needs of the settings: results every node and the push Job share (the
    Workspace's claim, or the output volume), and no model cache claim only one node can mount."""
    count = node_count(ws)
    if count == 1:
        return []
    problems = []
    last_host = pod_host(ws, settings, count - 1)
    if len(last_host) > NAME_MAX:
        problems.append(
            Problem(
                "metadata.name",
                f"is too long for {count} nodes: pod {count - 1}'s host name {last_host!r} would have "
                f"{len(last_host)} characters, more than a DNS label's {NAME_MAX}",
                ws.name,
                f"use a name of at most {len(ws.name) - (len(last_host) - NAME_MAX)} characters",
            )
        )
    output = ws.require_tuning().output
    if output is not None and output.volume_source is None and not uses_results_claim(ws, settings):
        problems.append(
            Problem(
                "resource.count",
                "more than one node needs results on a claim every node mounts (checkpoints to resume "
                f"from, the adapter to push); the controller runs with results on {settings.results_volume}",
                count,
                "run the controller with KAITO_TUNE_RESULTS_VOLUME=pvc and a ReadWriteMany storage class",
            )
        )
    if settings.model_cache == "pvc" and settings.model_cache_access_mode != "ReadWriteMany":
        problems.append(
            Problem(
                "resource.count",
                "more than one node would mount the model cache claim, which the controller makes "
                f"{settings.model_cache_access_mode}",
                count,
                "run the controller with KAITO_TUNE_MODEL_CACHE_ACCESS_MODE=ReadWriteMany (a storage class "
                "that offers it) or KAITO_TUNE_MODEL_CACHE=emptyDir",
            )
        )
    return problems


# ---- the decision ------------------------------------------------------------------------------


def decide(t: Target, seen: Mapping[str, Any]) -> Read | Plan:
    """What to write for the Workspace, given what was seen of its children (``seen``: the keys above;
    a key's value is the object, None when it does not exist)."""
    try:
        return _decide(t, seen)
    except _Unseen as unseen:
        return Read(unseen.what)


def _decide(t: Target, seen: Mapping[str, Any]) -> Plan:
    writes: list[Write] = []
    job_gone = False
    if t.known_rev and t.known_rev != t.rev:  # a changed spec: stop the old training first
        stop = _replace_other_revision(t, _own(_look(seen, JOB)))
        writes += stop
        job_gone = bool(stop)
    checked = _data_check(t, seen)
    if isinstance(checked, Plan):
        return _prefixed(writes, checked)
    more, summary, model = checked
    job = None if job_gone else _own(_look(seen, JOB))
    stop = _replace_other_revision(t, job)
    if stop:
        job = None
    writes += [*more, *stop]
    if job is None and t.known.get("phase") in st.TERMINAL:
        # This revision's Job finished and is gone (its TTL, or deleted by hand). The outcome stays in
        # status; training again would buy a GPU node and move the pushed tag. A changed spec retrains.
        return Plan(t.known["phase"], writes=(*writes, *release_writes(t.ws, t.settings)))
    return _prefixed(writes, _training(t, seen, job, (summary, model)))


def _prefixed(writes: list[Write], plan: Plan) -> Plan:
    return replace(plan, writes=(*writes, *plan.writes))


def _replace_other_revision(t: Target, job: Mapping[str, Any] | None) -> list[Write]:
    """Delete the training Job when it trains another revision (a changed spec: on purpose)."""
    if job is None or revision_of(job) == t.rev:
        return []
    why = f"the Workspace changed (revision {revision_of(job)} -> {t.rev})"
    return [_replace(job, why, JOB)]


def _replace(job: Mapping[str, Any], why: str, seen_as: str) -> Write:
    event = Event("Normal", "JobReplaced", f"deleted Job {job['metadata']['name']}: {why}")
    return Write(Verb.REPLACE, job, event, seen_as)


def release_writes(ws: Workspace, settings: Settings) -> list[Write]:
    """Delete the Workspace's NodeClaims: a GPU node costs money once the Job is done."""
    if not settings.auto_provisioning:
        return []
    return list(release_nodeclaims(nodeclaim_names(ws), "the GPU node is released"))


# ---- 1. data and model first, on CPU -----------------------------------------------------------


def _data_passed(data: Mapping[str, Any], model: Mapping[str, Any]) -> bool:
    return bool(data.get("ok") and data.get("sha256") and model.get("reference"))


def _data_check(
    t: Target, seen: Mapping[str, Any]
) -> tuple[list[Write], Mapping[str, Any], Mapping[str, Any]] | Plan:
    """(writes, data summary, pinned model) once the pre-flight passed, else the Plan that reports it.
    A passed check of this revision stays in status (its Job may be gone). The ConfigMap goes first: the
    Job's pod mounts it, and must never start with a namesake the Workspace does not own (which stops the
    plan before the Job, NameTaken) or with another revision's config."""
    data, model = t.known.get("data") or {}, t.known.get("model") or {}
    if _data_passed(data, model):
        return [], data, model
    writes: list[Write] = []
    config = render_training_configmap(t.ws, t.config)
    if t.known_rev is None:  # first sight: a plain create is cheaper for the API server than an apply
        writes.append(Write(Verb.CREATE_OR_APPLY, config))
    elif t.known_rev != t.rev:
        writes.append(Write(Verb.APPLY, config))
    job_writes, job = _ensure_data_job(t, seen)
    writes += job_writes
    pods = _look(seen, DATA_PODS) if _settled(job) else []
    outcome = st.job_outcome(job, pods)
    if outcome.phase not in (st.SUCCEEDED, st.FAILED):
        message = f"checking the data in Job {data_job_name(t.ws)}: {outcome.message}"
        return Plan(st.CHECKING_DATA, tuple(writes), st.checking_update(t.fresh, message, t.stamp))
    summary, model = st.data_summary(outcome), st.model_fetch(outcome)
    if outcome.phase == st.FAILED or summary is None or model is None or not _data_passed(summary, model):
        update = _data_failure(t, outcome, summary, model)
        return Plan(st.FAILED, (*writes, *release_writes(t.ws, t.settings)), update)
    return writes, summary, model


def _ensure_data_job(t: Target, seen: Mapping[str, Any]) -> tuple[list[Write], Mapping[str, Any]]:
    """The pre-flight Job as rendered: read when the status says it was created (else created, adopting
    a namesake); one of another revision is replaced."""
    rendered = render_data_job(t.ws, t.settings, t.rev)
    found = _own(_look(seen, DATA_JOB) if t.known_rev == t.rev else seen.get(DATA_JOB))
    create = [*_input_secret(t), Write(Verb.CREATE, rendered, seen_as=DATA_JOB)]
    if found is None:
        return create, rendered
    if revision_of(found) != revision_of(rendered):
        stop = _replace(found, "the Workspace changed: checking the data again", DATA_JOB)
        return [stop, *create], rendered
    return [], found


def _input_secret(t: Target) -> list[Write]:
    """The revision's input URLs, which the Jobs' fetch-data reads (not from its argv)."""
    secret = render_urls_secret(t.ws, t.rev)
    return [Write(Verb.CREATE_UNREAD, secret)] if secret else []


def _settled(job: Mapping[str, Any]) -> bool:
    status = job.get("status") or {}
    return bool(status.get("conditions") or status.get("failed") or status.get("succeeded"))


def _data_failure(
    t: Target, outcome: st.JobOutcome, summary: dict[str, Any] | None, model: dict[str, Any] | None
) -> StatusUpdate:
    message = st.data_failure_message(outcome, summary)
    reason = c.REASON_DATA_INVALID
    if st.model_fetch_failed(outcome):
        reason = c.REASON_MODEL_UNAVAILABLE
        source = workspace_model_source(_preset(t.ws), t.settings)
        secret = source.pull_secret or source.token_secret
        credentials = f"credentials from Secret {secret}" if secret else "no credentials"
        message += f" (source {source.reference}, {credentials})"
    return st.data_failed_update(t.fresh, message, reason, (summary, model), t.stamp)


# ---- 2. GPU nodes, only now, and 3. the training Job -------------------------------------------


def _training(
    t: Target,
    seen: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    found: tuple[Mapping[str, Any], Mapping[str, Any]],
) -> Plan:
    """The training Job with its least-privilege progress identity and results claim, created once a
    GPU node is there; its state as status. An existing Job has its node already. A Job for a queue
    (Kueue's label) with auto-provisioning is created first, suspended, and its NodeClaim only once the
    queue admitted it: a GPU node does not bill while its Job waits for quota."""
    writes: list[Write] = []
    node_conds: tuple[dict[str, Any], ...] = ()
    pods: list[Mapping[str, Any]] = []
    queued = bool(queue_of(t.ws)) and provisions_node(t.ws, t.settings)
    if job is None:
        if isinstance(seen.get(JOB), Taken):  # no GPU node for a Job that cannot be created
            return _taken(t, seen[JOB])
        if queued:
            gpus = sku_gpus(t.ws)
        else:
            nodes = _gpu_nodes(t, seen, found[0])
            if isinstance(nodes, Plan):
                return nodes
            writes, gpus, node_conds = nodes
        data_sha256, model_reference = found[0]["sha256"], found[1]["reference"]
        job = render_training_job(
            t.ws, t.settings, t.rev, data_sha256=data_sha256, gpus=gpus, model_reference=model_reference
        )
        writes += [*_training_companions(t), Write(Verb.CREATE, job, seen_as=JOB)]
    else:
        pods = _look(seen, JOB_PODS)
    outcome = st.job_outcome(job, pods)
    requeued = False
    if outcome.phase == st.QUEUED:
        queue_writes, outcome, requeued = _in_queue(t, seen, job, outcome)
        writes += queue_writes
    elif queued and outcome.phase not in (st.SUCCEEDED, st.FAILED):  # admitted: now the GPU node
        claimed = _nodeclaim(t, seen)
        if isinstance(claimed, Plan):
            return claimed
        claim_writes, ready_cond, waiting = claimed
        writes, node_conds = [*writes, *claim_writes], (ready_cond,)
        if waiting and outcome.phase == st.PENDING:
            outcome = replace(outcome, message=f"admitted by queue {queue_of(t.ws)}; {waiting}")
    if outcome.phase in (st.SUCCEEDED, st.FAILED):
        finish, outcome = _finished(t, seen, outcome)
        writes += finish
    output = t.ws.require_tuning().output
    update = st.training_update(
        t.fresh, outcome, output.image if output else None, found, node_conds, t.stamp
    )
    return Plan(st.training_phase(outcome), tuple(writes), replace(update, requeued=requeued))


def _in_queue(
    t: Target, seen: Mapping[str, Any], job: Mapping[str, Any], outcome: st.JobOutcome
) -> tuple[list[Write], st.JobOutcome, bool]:
    """(writes, outcome, requeued) of a suspended Job: the queue's reason as its message (Kueue's Workload,
    once the Job exists and has a uid). A Job Kueue evicted after admitting it (preempted) is queued again:
    its NodeClaim is released until the queue admits it again."""
    workload = _look(seen, WORKLOAD) if "uid" in job["metadata"] else None
    outcome = replace(outcome, message=st.queued_message(queue_of(t.ws), workload))
    if not st.evicted_by_queue(workload):
        return [], outcome, False
    return release_writes(t.ws, t.settings), outcome, True


def _finished(
    t: Target, seen: Mapping[str, Any], trained: st.JobOutcome
) -> tuple[list[Write], st.JobOutcome]:
    """The GPU nodes released once the training Job ended; a multi-node adapter's push follows. A
    failed push (one node: the pod's last container) says where the adapter stays."""
    writes = release_writes(t.ws, t.settings)
    if trained.phase == st.FAILED and trained.failure.startswith(f"{PUSH} "):
        return writes, replace(trained, message=c.clip(f"{trained.message}; {_kept(t)}"))
    if trained.phase != st.SUCCEEDED or not needs_push_job(t.ws):
        return writes, trained
    pushing, outcome = _push(t, seen, trained)
    return [*writes, *pushing], outcome


def _kept(t: Target) -> str:
    """Where the adapter of a failed push stays (a scratch volume goes with the pod)."""
    if uses_results_claim(t.ws, t.settings):
        return f"the adapter stays on claim {results_claim_name(t.ws)}, revision-{t.rev}"
    return (
        "the adapter was on the pod's scratch volume and is gone with it "
        "(KAITO_TUNE_RESULTS_VOLUME=pvc keeps it)"
    )


def _push(t: Target, seen: Mapping[str, Any], trained: st.JobOutcome) -> tuple[list[Write], st.JobOutcome]:
    """(writes, outcome) of the push Job that follows a multi-node training: created once the training
    Job completed (one of another revision replaced); its outcome is the Workspace's from then on, with
    the training's start time, and a failed push says where the adapter stays."""
    rendered = render_push_job(t.ws, t.settings, t.rev)
    job = _own(_look(seen, PUSH_JOB))
    writes: list[Write] = []
    if job is not None and revision_of(job) != t.rev:
        writes.append(_replace(job, "the Workspace changed: pushing this revision's adapter", PUSH_JOB))
        job = None
    if job is None:
        writes.append(Write(Verb.CREATE, rendered, seen_as=PUSH_JOB))
        pushed = st.job_outcome(rendered, [])
    else:
        pushed = st.job_outcome(job, _look(seen, PUSH_PODS))
    pushed = replace(pushed, start_time=trained.start_time)
    name = push_job_name(t.ws)
    if pushed.phase == st.FAILED:
        message = f"push Job {name} failed: {pushed.message}; {_kept(t)}"
        return writes, replace(pushed, message=c.clip(message))
    if pushed.phase != st.SUCCEEDED:
        message = f"training completed; pushing the adapter in Job {name}: {pushed.message}"
        return writes, replace(pushed, phase="Running", running=PUSH, message=c.clip(message))
    return writes, pushed


def _nodeclaim(t: Target, seen: Mapping[str, Any]) -> tuple[list[Write], dict[str, Any], str] | Plan:
    """(writes, NodeClaimReady, what the pods wait for or "" when every node is ready) for the Workspace's
    NodeClaims (one per node of resource.count), those missing requested; the NameTaken Plan when another
    object holds one of their names."""
    claims = list(_look(seen, NODECLAIM))
    taken = next((claim for claim in claims if isinstance(claim, Taken)), None)
    if taken is not None:
        return _taken(t, taken)
    writes = []
    instance_type = t.ws.resource.instance_type if t.ws.resource else ""
    for index, claim in enumerate(claims):
        if claim is None:
            claims[index] = render_nodeclaim(t.ws, t.settings, index)
            event = Event("Normal", "NodeClaimCreated", f"requested a {instance_type} node")
            # no seen_as: an own namesake found on create (after a restart) is taken as it is, and its
            # state comes with the NodeClaim's next event
            writes.append(Write(Verb.CREATE, claims[index], event))
    ready, message = nodeclaims_state(claims)
    reason = c.REASON_NODECLAIMS_READY if ready else c.REASON_NODECLAIM_NOT_READY
    cond = t.stamp.condition(c.NODECLAIM_READY, ready, reason, message)
    return writes, cond, "" if ready else message


def _training_companions(t: Target) -> list[Write]:
    """What the training pod needs besides its Job: its progress identity and claims."""
    writes = [*_input_secret(t), *(Write(Verb.APPLY, obj) for obj in render_progress_rbac(t.ws))]
    if node_count(t.ws) > 1 and not uses_jobset(t.ws, t.settings):
        # the pods' DNS names, before the pods look each other up (a JobSet's controller makes its own)
        writes.append(Write(Verb.CREATE, render_rendezvous_service(t.ws)))
    if uses_results_claim(t.ws, t.settings):
        writes.append(Write(Verb.CREATE, render_results_claim(t.ws, t.settings)))
    if t.settings.model_cache == "pvc":
        writes.append(Write(Verb.CREATE, render_model_cache_claim(t.ws.namespace, t.settings)))
    return writes


def _gpu_nodes(
    t: Target, seen: Mapping[str, Any], summary: Mapping[str, Any]
) -> tuple[list[Write], int, tuple[dict[str, Any], ...]] | Plan:
    """(writes, GPUs for the training pod, NodeClaimReady), or the Plan that waits for a node."""
    if provisions_node(t.ws, t.settings):
        claimed = _nodeclaim(t, seen)
        if isinstance(claimed, Plan):
            return claimed
        writes, ready_cond, waiting = claimed
        if waiting:
            return _prefixed(writes, _waiting(t, (ready_cond,), waiting, summary))
        return writes, sku_gpus(t.ws), (ready_cond,)
    selector = t.ws.resource.label_selector if t.ws.resource else None
    choice = choose_node(_look(seen, NODES), selector, _need_gib(t), node_count(t.ws))
    if not choice.ok:
        return _waiting(t, (), choice.message, summary)
    return [], choice.gpus, ()


def _waiting(t: Target, conds: tuple[dict[str, Any], ...], message: str, summary: Mapping[str, Any]) -> Plan:
    update = st.waiting_update(t.fresh, conds, message, summary, t.stamp)
    retry = float(t.settings.node_retry_seconds)
    return Plan(st.WAITING_FOR_NODES, status=update, result=Result.WAITING, retry_after=retry, why=message)


def _preset(ws: Workspace) -> PresetSpec:
    preset = ws.require_tuning().preset
    if preset is None:  # validation refuses this before any decision
        raise ValueError(f"Workspace {ws.name!r} has no tuning.preset")
    return preset


def _need_gib(t: Target) -> float | None:
    """GiB per GPU the training needs (None when the preset is not in the catalog)."""
    from presets.catalog import UnknownName, get_model

    method = Method.parse(t.ws.require_tuning().method)
    try:
        preset = get_model(_preset(t.ws).name)
    except UnknownName:
        return None
    return training_shape(t.config.doc, method or "", preset).estimate(preset).total_gib


# ---- when to look again without an event -------------------------------------------------------


def resync_after(
    phase: str | None, settings: Settings, *, blocked: bool = False
) -> tuple[float, bool] | None:
    """(seconds, whether a change of the Workspace postpones it) until a Workspace in ``phase`` is
    reconciled again although no event came, or None for never.

    Waiting for nodes, or ``blocked`` by a name another object holds (status.name_taken): every
    node_retry_seconds (own nodes and freed names send no event it could follow). In progress:
    once nothing happened to it for resync_seconds, so a lost Job or pod event (an API blip at
    completion) costs at most that long, not a GPU node billing forever."""
    if phase == st.WAITING_FOR_NODES or blocked:
        return float(settings.node_retry_seconds), False
    if phase and phase not in (*st.TERMINAL, st.INVALID):
        return float(settings.resync_seconds), True
    return None
