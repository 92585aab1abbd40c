"""The controller touches only what its Workspace owns (issue 15, item 4).

Without a cluster: the pure ownership rules, the NameTaken status, the shell against an in-memory API
(a namesake it does not own is neither adopted, applied over nor deleted), the per-Workspace locks and
the bounded memory of deleted uids. On the local cluster: a data Job and a training ConfigMap created by
someone else before the Workspace stay untouched, the Workspace's status names them, and it goes on once
the name is free."""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any

import pytest

from contract.pod import urls_sha256
from contract.workspace import parse_workspace
from tests.controller.conftest import apply, condition, get_workspace, tuning_workspace, wait_status
from tests.controller.test_tuning_reconcile import NOW, SETTINGS, valid, workspace
from tests.fixtures.cluster import kube_json, wait_for
from tuning_controller import conditions as c
from tuning_controller import status as st
from tuning_controller.handlers import runtime
from tuning_controller.handlers.runtime import (
    Controller,
    NameTaken,
    Tombstones,
    carry_out,
    deleting,
    owned,
    owner_of,
    read_own,
    reconciling,
)
from tuning_controller.kube import KubeError
from tuning_controller.plan import Result, Taken, Verb, Write, named
from tuning_controller.render import render_workspace_objects
from tuning_controller.render.configmap import render_training_configmap
from tuning_controller.render.job import render_data_job
from tuning_controller.render.nodeclaim import (
    NODECLAIM_API_VERSION,
    OWNER_ANNOTATION,
    claimed_by,
    render_nodeclaim,
)
from tuning_controller.settings import Settings
from tuning_controller.tuning_reconcile import JOB, NODECLAIM

WS = workspace()  # team/ws, uid-1
SKU = "Standard_NC24ads_A100_v4"


def foreign(kind: str, name: str, owner_uid: str | None = None, namespace: str | None = "team") -> dict:
    meta: dict[str, Any] = {"name": name, "uid": f"{name}-uid", "resourceVersion": "1"}
    if namespace:
        meta["namespace"] = namespace
    if owner_uid:
        meta["ownerReferences"] = [
            {"kind": "Workspace", "name": "other", "uid": owner_uid, "controller": True}
        ]
    api = {"Job": "batch/v1", "NodeClaim": NODECLAIM_API_VERSION}.get(kind, "v1")
    return {"apiVersion": api, "kind": kind, "metadata": meta}


# ---- the pure rules --------------------------------------------------------------------------------


def test_an_object_is_the_workspaces_only_with_an_owner_reference_to_its_uid():
    job = render_data_job(valid(WS).ws, SETTINGS, "rev")
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert owned({**job, "metadata": {**job["metadata"], "uid": "j"}}, WS)
    assert not owned(foreign("Job", "ws-data"), WS)
    assert not owned(foreign("Job", "ws-data", owner_uid="uid-2"), WS)
    assert owner_of(foreign("Job", "ws-data", owner_uid="uid-2")) == "Workspace other (uid uid-2)"
    assert owner_of(foreign("Job", "ws-data")) == ""


def test_a_nodeclaim_carries_the_workspace_uid_and_is_claimed_only_with_it():
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    ws = valid(workspace(instance_type=SKU), settings).ws
    claim = render_nodeclaim(ws, settings)
    assert claim["metadata"]["annotations"] == {OWNER_ANNOTATION: "uid-1"}
    assert claimed_by(claim, "team", "ws", "uid-1") and owned(claim, WS)
    assert not claimed_by(claim, "team", "ws", "uid-2")  # a deleted namesake Workspace's claim
    bare = foreign("NodeClaim", claim["metadata"]["name"], namespace=None)
    assert not owned(bare, WS)  # someone else's, e.g. made by hand or by another provisioner
    # One made before the annotation existed: the controller's labels for this very Workspace.
    legacy = copy.deepcopy(claim)
    del legacy["metadata"]["annotations"]
    assert claimed_by(legacy, "team", "ws", "uid-1")
    assert not claimed_by(legacy, "other-team", "ws", "uid-1")


def test_a_taken_name_is_reported_on_the_status_and_retried():
    t = valid(workspace({"tuning": {"phase": st.CHECKING_DATA}, "state": "Pending"}))
    taken = Taken("Job", "team", "ws-data")
    plan = st.taken_plan(st.KIND, t.ws_obj, taken, t.stamp, 30.0)
    assert plan.result is Result.WAITING and plan.retry_after == 30.0 and plan.writes == ()
    assert plan.phase == st.CHECKING_DATA  # the phase stays
    message = plan.status.section["message"]
    assert message.startswith("Job team/ws-data exists and is not owned by this Workspace (uid uid-1")
    assert "it has no owner" in message and "Delete that Job" in message and "every 30s" in message
    ready = c.find(plan.status.conditions, c.RESOURCE_READY)
    assert (ready["status"], ready["reason"]) == ("False", c.REASON_NAME_TAKEN)
    assert c.find(plan.status.conditions, c.WORKSPACE_SUCCEEDED)["status"] == "Unknown"
    assert "phase" not in plan.status.section and plan.status.state == "Pending"
    # One Warning per new message, none when it is written again unchanged.
    assert st.announcement(t.ws_obj, plan.status).reason == c.REASON_NAME_TAKEN
    written = {**t.ws_obj, "status": {"tuning": {"message": message}}}
    assert st.announcement(written, plan.status) is None
    stored = {"status": {"conditions": list(plan.status.conditions)}}
    assert st.name_taken(stored) and not st.name_taken(t.ws_obj)


NOW_STAMP = c.Stamp(1, NOW)


def test_an_inference_workspace_reports_a_taken_name_on_inference_ready():
    ws = {"metadata": {"uid": "u", "name": "s", "namespace": "n"}, "status": {"state": "Running"}}
    plan = st.taken_plan("inference", ws, Taken("Service", "n", "s", "Deployment x (uid y)"), NOW_STAMP, 5)
    assert {cond["type"] for cond in plan.status.conditions} == {
        c.RESOURCE_READY,
        c.INFERENCE_READY,
        c.WORKSPACE_SUCCEEDED,
    }
    assert "owned by Deployment x (uid y)" in plan.status.section["message"]
    assert plan.status.state == "Running"


def test_a_blocked_workspace_is_looked_at_again_every_node_retry():
    from tuning_controller.tuning_reconcile import resync_after

    assert resync_after(None, SETTINGS, blocked=True) == (SETTINGS.node_retry_seconds, False)
    assert resync_after(st.CHECKING_DATA, SETTINGS, blocked=True) == (SETTINGS.node_retry_seconds, False)


def test_no_gpu_node_is_requested_for_a_training_job_whose_name_is_taken():
    from tests.controller.test_tuning_reconcile import passed, run

    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    rev = valid(workspace(instance_type=SKU), settings).rev
    t = valid(workspace(passed(rev), instance_type=SKU), settings)
    plan, reads = run(t, {JOB: Taken("Job", "team", "ws", "Deployment x (uid y)"), NODECLAIM: (None,)})
    assert reads == [JOB] and plan.writes == ()  # no NodeClaim for a Job that cannot be made
    assert plan.result is Result.WAITING and plan.why.startswith("Job team/ws exists and is not owned")

    claim = Taken("NodeClaim", None, "ws-12345678")
    plan, reads = run(t, {JOB: None, NODECLAIM: (claim,)})
    assert reads == [JOB, NODECLAIM] and plan.writes == ()
    assert plan.why.startswith("NodeClaim ws-12345678 exists and is not owned by this Workspace")

    # A finished revision keeps its outcome though a namesake took its Job's name since.
    done = valid(workspace(passed(rev, st.SUCCEEDED), instance_type=SKU), settings)
    plan, _ = run(done, {JOB: Taken("Job", "team", "ws")})
    assert plan.phase == st.SUCCEEDED and plan.status is None


# ---- the shell against an in-memory API server ------------------------------------------------------


class MemoryKube:
    """The few calls the shell makes, on a dict; records each write."""

    def __init__(self, *objects: dict):
        self.objects = {self._key(o): copy.deepcopy(o) for o in objects}
        self.writes: list[tuple[str, str, str]] = []
        self._uids = 0

    @staticmethod
    def _key(obj: dict) -> tuple[str, str | None, str]:
        return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def create(self, obj: dict) -> dict:
        if self._key(obj) in self.objects:
            raise KubeError(409, {"reason": "AlreadyExists", "message": "exists"})
        self._uids += 1
        made = copy.deepcopy(dict(obj))
        made["metadata"]["uid"] = f"made-{self._uids}"
        self.objects[self._key(made)] = made
        self.writes.append(("create", obj["kind"], obj["metadata"]["name"]))
        return copy.deepcopy(made)

    def apply(self, obj: dict) -> dict:
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        current = self.objects.get(self._key(obj)) or {"metadata": {"uid": "applied"}}
        merged = {
            **copy.deepcopy(dict(obj)),
            "metadata": {**obj["metadata"], "uid": current["metadata"]["uid"]},
        }
        self.objects[self._key(obj)] = merged
        return copy.deepcopy(merged)

    def delete(self, api_version, kind, namespace, name, *, propagation="Background", uid=None) -> bool:
        found = self.objects.get((kind, namespace, name))
        if found is None:
            return False
        if uid and found["metadata"]["uid"] != uid:
            raise KubeError(409, {"reason": "Conflict", "message": "uid precondition"})
        self.writes.append(("delete", kind, name))
        del self.objects[(kind, namespace, name)]
        return True

    def wait_gone(self, *args, **kwargs) -> bool:
        return True

    def merge_patch(self, api_version, kind, namespace, name, patch, subresource=None) -> dict:
        self.writes.append(("patch", kind, name))
        return copy.deepcopy(self.objects.get((kind, namespace, name)) or {})


def shell(*objects: dict) -> tuple[Controller, MemoryKube]:
    kube = MemoryKube(*objects)
    events: list = []
    return Controller(kube, SETTINGS, lambda *a: events.append(a)), kube  # type: ignore[arg-type]


def test_a_create_adopts_an_own_namesake_but_not_anothers():
    data_job = render_data_job(valid(WS).ws, SETTINGS, "rev")
    own = {**copy.deepcopy(data_job), "metadata": {**data_job["metadata"], "uid": "restart"}}
    ctl, kube = shell(own)
    seen: dict = {}
    assert carry_out(ctl, WS, (Write(Verb.CREATE, data_job, seen_as="job"),), seen, set()) is False
    assert seen["job"]["metadata"]["uid"] == "restart" and kube.writes == []  # adopted (a restart)

    ctl, kube = shell(foreign("Job", "ws-data"))
    config = render_training_configmap(valid(WS).ws, valid(WS).config)
    writes = (Write(Verb.CREATE, data_job, seen_as="job"), Write(Verb.CREATE_OR_APPLY, config))
    with pytest.raises(NameTaken) as raised:
        carry_out(ctl, WS, writes, {}, set())
    assert raised.value.taken == Taken("Job", "team", "ws-data", "")
    assert kube.writes == []  # nothing after it either
    assert kube.objects[("Job", "team", "ws-data")] == foreign("Job", "ws-data")


def test_an_apply_over_anothers_object_is_refused_and_an_own_one_applied():
    config = render_training_configmap(valid(WS).ws, valid(WS).config)
    taken = foreign("ConfigMap", "ws-training-config", owner_uid="uid-2")
    for verb in (Verb.APPLY, Verb.CREATE_OR_APPLY):
        ctl, kube = shell(taken)
        with pytest.raises(NameTaken) as raised:
            carry_out(ctl, WS, (Write(verb, config),), {}, set())
        assert raised.value.taken.owner == "Workspace other (uid uid-2)"
        assert kube.writes == [] and kube.objects[("ConfigMap", "team", "ws-training-config")] == taken
    own = {**copy.deepcopy(config), "metadata": {**config["metadata"], "uid": "c"}}
    ctl, kube = shell(own)
    assert carry_out(ctl, WS, (Write(Verb.APPLY, config),), {}, set())
    assert kube.writes == [("apply", "ConfigMap", "ws-training-config")]


def test_a_shared_object_without_an_owner_is_adopted_as_before():
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "cache", "namespace": "team"},
    }
    ctl, kube = shell({**claim, "metadata": {**claim["metadata"], "uid": "shared"}})
    seen: dict = {}
    assert not carry_out(ctl, WS, (Write(Verb.CREATE, claim, seen_as="claim"),), seen, set())
    assert seen["claim"]["metadata"]["uid"] == "shared" and kube.writes == []


def test_a_delete_by_name_leaves_anothers_namesake_alone():
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    ws = valid(workspace(instance_type=SKU), settings).ws
    claim = render_nodeclaim(ws, settings)
    name = claim["metadata"]["name"]
    release = (Write(Verb.DELETE, named(NODECLAIM_API_VERSION, "NodeClaim", name)),)
    ctl, kube = shell(foreign("NodeClaim", name, namespace=None))
    assert carry_out(ctl, WS, release, {}, set())
    assert kube.writes == [] and ("NodeClaim", None, name) in kube.objects
    ctl, kube = shell({**claim, "metadata": {**claim["metadata"], "uid": "mine"}})
    carry_out(ctl, WS, release, {}, set())
    assert kube.writes == [("delete", "NodeClaim", name)]


def test_a_read_sees_only_what_the_workspace_owns():
    ctl, _ = shell(foreign("Job", "ws-data"))
    assert read_own(ctl, WS, "batch/v1", "Job", "team", "ws-data") is None
    reported = read_own(ctl, WS, "batch/v1", "Job", "team", "ws-data", report=True)
    assert reported == Taken("Job", "team", "ws-data", "")
    job = render_data_job(valid(WS).ws, SETTINGS, "rev")
    ctl, _ = shell({**job, "metadata": {**job["metadata"], "uid": "j"}})
    assert read_own(ctl, WS, "batch/v1", "Job", "team", "ws-data")["metadata"]["uid"] == "j"


# ---- locks and deleted uids -------------------------------------------------------------------------


def test_a_reconcile_after_the_delete_handler_is_told_to_write_nothing():
    body = {"metadata": {"namespace": "team", "name": "gone", "uid": "gone-uid"}}
    with reconciling(body) as alive:
        assert alive
    with deleting(body):
        pass
    with reconciling(body) as alive:
        assert not alive
    newer = {"metadata": {**body["metadata"], "uid": "newer-uid"}}  # a namesake created since
    with reconciling(newer) as alive:
        assert alive
    assert "team/gone" not in runtime._locks  # no lock kept for an idle Workspace


def test_the_delete_handler_waits_for_a_reconcile_in_flight():
    body = {"metadata": {"namespace": "team", "name": "busy", "uid": "busy-uid"}}
    order: list[str] = []

    def delete() -> None:
        with deleting(body):
            order.append("delete")

    with reconciling(body) as alive:
        assert alive
        thread = threading.Thread(target=delete)
        thread.start()
        time.sleep(0.2)  # the delete handler would run now without the lock
        order.append("reconcile done")
    thread.join(5)
    assert order == ["reconcile done", "delete"]
    assert "team/busy" not in runtime._locks


def test_deleted_uids_are_bounded():
    kept = Tombstones(size=3)
    for i in range(5):
        kept.add(f"u{i}")
    assert len(kept) == 3 and "u0" not in kept and "u1" not in kept and "u4" in kept


# ---- on the local cluster ---------------------------------------------------------------------------


def _suspended_job(name: str, namespace: str) -> dict:
    """Someone else's Job: suspended, so it never runs, and owned by nobody."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {"made-by": "someone-else"}},
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


def written_by_the_controller(obj: dict) -> bool:
    """Whether the controller (field manager kaito-tune) wrote any field or an owner reference: the
    Job controller's own status writes change a Job's resourceVersion, these do not."""
    managers = {entry.get("manager") for entry in obj["metadata"].get("managedFields") or []}
    return "kaito-tune" in managers or "ownerReferences" in obj["metadata"]


def _taken_message(ws: dict) -> str:
    ready = condition(ws, "ResourceReady")
    return ready.get("message", "") if ready.get("reason") == "NameTaken" else ""


def test_a_data_job_and_a_config_map_of_someone_else_are_left_alone_and_named(
    kube_client, namespace, run_operator
):
    run_operator(KAITO_TUNE_NODE_RETRY_SECONDS="2")
    jobs_path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    theirs = kube_json(kube_client, "POST", jobs_path, _suspended_job("blocked-data", namespace))
    config = {"metadata": {"name": "blocked2-training-config"}, "data": {"theirs": "yes"}}
    configs_path = f"/api/v1/namespaces/{namespace}/configmaps"
    their_config = kube_json(kube_client, "POST", configs_path, config)

    apply(kube_client, tuning_workspace("blocked", namespace))
    apply(kube_client, tuning_workspace("blocked2", namespace))
    blocked = wait_status(
        kube_client, namespace, "blocked", lambda w: _taken_message(w), 60, "NameTaken for the data Job"
    )
    uid = blocked["metadata"]["uid"]
    message = _taken_message(blocked)
    assert f"Job {namespace}/blocked-data exists and is not owned by this Workspace (uid {uid}" in message
    assert blocked["status"]["tuning"]["message"] == message
    blocked2 = wait_status(
        kube_client, namespace, "blocked2", lambda w: _taken_message(w), 60, "NameTaken for the ConfigMap"
    )
    assert f"ConfigMap {namespace}/blocked2-training-config exists" in _taken_message(blocked2)

    # Neither object was written to, and blocked2's data Job (which would mount that ConfigMap) was
    # never made; the reconcile runs again (every 2 s here) without changing that.
    wait_for(lambda: _warned(kube_client, namespace), 30, "a NameTaken Warning Event")
    found = kube_json(kube_client, "GET", f"{jobs_path}/blocked-data")
    assert found["metadata"]["uid"] == theirs["metadata"]["uid"]  # not deleted and made again
    assert not written_by_the_controller(found) and found["metadata"]["labels"] == {"made-by": "someone-else"}
    found_config = kube_json(kube_client, "GET", f"{configs_path}/blocked2-training-config")
    assert found_config["metadata"]["resourceVersion"] == their_config["metadata"]["resourceVersion"]
    assert not written_by_the_controller(found_config)
    names = [j["metadata"]["name"] for j in kube_json(kube_client, "GET", jobs_path)["items"]]
    assert names == ["blocked-data"]

    # The name freed, the Workspace goes on by itself.
    kube_json(kube_client, "DELETE", f"{jobs_path}/blocked-data", {"propagationPolicy": "Background"})
    going = wait_status(
        kube_client,
        namespace,
        "blocked",
        lambda w: (w.get("status") or {}).get("tuning", {}).get("phase") == "CheckingData",
        60,
        "the data check once the name is free",
    )
    assert condition(going, "ResourceReady").get("reason") != "NameTaken"
    job = kube_json(kube_client, "GET", f"{jobs_path}/blocked-data")
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    assert get_workspace(kube_client, namespace, "blocked2")["status"]["tuning"].get("phase") is None


def _warned(kube_client, namespace: str) -> bool:
    found = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/events").get("items") or []
    return any(e.get("reason") == "NameTaken" and e.get("type") == "Warning" for e in found)


def test_a_service_of_someone_else_is_left_alone_and_no_server_is_made(kube_client, namespace, run_operator):
    run_operator(KAITO_TUNE_NODE_RETRY_SECONDS="2")
    services = f"/api/v1/namespaces/{namespace}/services"
    spec = {"selector": {"app": "theirs"}, "ports": [{"port": 81}]}
    service = {"metadata": {"name": "served"}, "spec": spec}
    theirs = kube_json(kube_client, "POST", services, service)
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "served", "namespace": namespace},
        "resource": {"labelSelector": {"matchLabels": {"apps": "phi-3"}}},
        "inference": {"preset": {"name": "tiny-llama"}},
    }
    kube_json(kube_client, "POST", f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces", ws)
    blocked = wait_status(
        kube_client, namespace, "served", lambda w: _taken_message(w), 60, "NameTaken for the Service"
    )
    assert f"Service {namespace}/served exists and is not owned by this Workspace" in _taken_message(blocked)
    assert condition(blocked, "InferenceReady")["reason"] == "NameTaken"
    assert blocked["status"]["inference"]["message"] == _taken_message(blocked)
    time.sleep(3)  # a retry (every 2 s here) changes nothing either
    found = kube_json(kube_client, "GET", f"{services}/served")
    assert found["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert found["spec"]["selector"] == {"app": "theirs"} and not written_by_the_controller(found)
    deployments = kube_json(kube_client, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
    assert deployments["items"] == []


def test_a_nodeclaim_of_someone_else_is_neither_used_nor_released(
    kube_client, namespace, control_plane, workspace_crd, nodeclaim_crd, monkeypatch
):
    """In this process against the real API server (no operator): a NodeClaim with the inference
    Workspace's claim name, made by someone else, stays as it is through a reconcile and the delete
    handler, and the status names it."""
    from tuning_controller.handlers import inference as handlers
    from tuning_controller.kube import Kube
    from tuning_controller.render.nodeclaim import nodeclaim_name

    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "gpu", "namespace": namespace},
        "resource": {"instanceType": SKU, "labelSelector": {"matchLabels": {"apps": "phi-3"}}},
        "inference": {"preset": {"name": "tiny-llama"}},
    }
    body = kube_json(kube_client, "POST", f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces", ws)
    name = nodeclaim_name(_parsed(body))
    theirs = {
        "apiVersion": NODECLAIM_API_VERSION,
        "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"kaito.sh/workspace": "gpu"}},
        "spec": {
            "nodeClassRef": {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "default"},
            "requirements": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}],
        },
    }
    made = kube_json(kube_client, "POST", nodeclaim_crd, theirs)
    try:
        settings = Settings(auto_provisioning=True, model_registry=SETTINGS.model_registry)
        kube = Kube.from_environment(str(control_plane.kubeconfig))
        ctl = Controller(kube, settings, lambda *a: None)
        monkeypatch.setattr(runtime, "_controller", ctl)
        plan = handlers.reconcile(ctl, body)
        assert plan is not None and plan.result is Result.WAITING
        assert plan.why.startswith(f"NodeClaim {name} exists and is not owned by this Workspace")
        stored = get_workspace(kube_client, namespace, "gpu")
        assert condition(stored, "ResourceReady")["reason"] == "NameTaken"
        handlers.inference_workspace_delete(body)
        found = kube_json(kube_client, "GET", f"{nodeclaim_crd}/{name}")
        assert found["metadata"]["uid"] == made["metadata"]["uid"] and not written_by_the_controller(found)
    finally:
        kube_json(kube_client, "DELETE", f"{nodeclaim_crd}/{name}")


def _parsed(body: dict):
    from contract.workspace import parse_workspace

    return parse_workspace(body)[0]


def test_a_pod_that_only_carries_the_jobs_label_does_not_set_its_outcome():
    """The Job's pods are read by its uid label and kept only when the Job controls them: a pod someone
    made with the label (and a termination message naming an adapter digest) is ignored."""
    from tuning_controller.handlers import tuning as handlers

    job = {"metadata": {"name": "ws", "namespace": "team", "uid": "job-uid"}}
    label = {"batch.kubernetes.io/controller-uid": "job-uid"}
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "ws", "uid": "job-uid", "controller": True}
    real = {"metadata": {"name": "ws-abc", "labels": label, "ownerReferences": [owner]}}
    forged = {"metadata": {"name": "ws-forged", "labels": label}}
    seen: list[str | None] = []

    class Listing:
        def list(self, api_version, kind, namespace=None, label_selector=None):
            seen.append(label_selector)
            return [real, forged]

    ctl = runtime.Controller(Listing(), Settings(), lambda *a: None)  # type: ignore[arg-type]
    assert handlers._pods(ctl, job) == [real]
    assert seen == ["batch.kubernetes.io/controller-uid=job-uid"]


def test_a_workspace_blocked_by_a_taken_name_releases_its_gpu_node(monkeypatch):
    """A name taken after the node came up (the training's ServiceAccount, say) blocks the Workspace
    until it is free: its NodeClaim is released meanwhile instead of billing."""
    from tuning_controller.handlers import tuning as handlers

    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    ws_obj = workspace(instance_type=SKU)
    claim = render_nodeclaim(valid(ws_obj, settings).ws, settings)
    claim["metadata"]["uid"] = "claim-uid"
    kube = MemoryKube(ws_obj, claim)
    ctl = Controller(kube, settings, lambda *a: None)  # type: ignore[arg-type]

    def blocked(*_):
        raise NameTaken(Taken("ServiceAccount", "team", "ws-tuning", ""))

    monkeypatch.setattr(handlers, "_carry", blocked)
    plan = handlers._reconcile(ctl, ws_obj, None)
    assert plan.result is Result.WAITING and plan.why.startswith("ServiceAccount team/ws-tuning exists")
    assert ("delete", "NodeClaim", claim["metadata"]["name"]) in kube.writes
    assert kube.get("karpenter.sh/v1", "NodeClaim", None, claim["metadata"]["name"]) is None


def test_a_namesake_of_the_input_urls_secret_is_left_unread_and_the_job_checks_its_digest(
    kube_client, namespace, run_operator
):
    """The controller may create Secrets but not read them: a Secret someone made first at the input
    URLs' name is neither read nor written, and the data Job's fetch-data carries the digest of the
    Workspace's own URL list, which that Secret's content fails (fetch-data then refuses:
    tests/artifacts/test_fetch_urls.py). No URL is in any container's argv."""
    run_operator()
    signed = "http://127.0.0.1:9/train.parquet?sig=SIGNEDTOKEN"
    ws_obj = tuning_workspace("squatted", namespace, urls=[signed])
    rendered = render_workspace_objects(parse_workspace(ws_obj)[0], Settings())
    secret_name = next(o["metadata"]["name"] for o in rendered if o["kind"] == "Secret")
    secrets_path = f"/api/v1/namespaces/{namespace}/secrets"
    theirs = {"metadata": {"name": secret_name}, "stringData": {"urls": "http://elsewhere.example/x\n"}}
    their_secret = kube_json(kube_client, "POST", secrets_path, theirs)

    apply(kube_client, ws_obj)
    jobs_path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    wait_for(lambda: kube_json(kube_client, "GET", jobs_path)["items"], 60, "the data Job")
    job = kube_json(kube_client, "GET", f"{jobs_path}/squatted-data")
    assert "SIGNEDTOKEN" not in json.dumps(job["spec"])
    fetch = next(c for c in job["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fetch-data")
    argv = [*fetch["command"], *fetch.get("args", [])]
    assert argv[argv.index("--expect-urls-sha256") + 1] == urls_sha256([signed])
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "input-urls")
    assert volume["secret"]["secretName"] == secret_name
    found = kube_json(kube_client, "GET", f"{secrets_path}/{secret_name}")
    assert found["metadata"]["resourceVersion"] == their_secret["metadata"]["resourceVersion"]
    assert not written_by_the_controller(found)
