"""Controller restarts, API conflicts and spec changes on the real API server: what these cases check
are the objects the controller writes, whatever the node makes of their pods."""

from __future__ import annotations

import signal

import pytest
import yaml

from tests.controller.conftest import (
    apply,
    condition,
    events,
    get_workspace,
    jobs,
    tuning_workspace,
    wait_status,
)
from tests.controller.test_end_to_end import training_config
from tests.fixtures.cluster import kube_json, wait_for
from tuning_controller import conditions as c
from tuning_controller.handlers.runtime import Controller, write_status
from tuning_controller.handlers.tuning import reconcile
from tuning_controller.kube import Kube, KubeError
from tuning_controller.plan import Result, StatusUpdate
from tuning_controller.settings import Settings

API = "/apis/kaito.sh/v1beta1"


def checking_data(ws: dict) -> bool:
    return ((ws.get("status") or {}).get("tuning") or {}).get("phase") == "CheckingData"


def test_killed_mid_reconcile_and_restarted_makes_no_duplicates(kube_client, namespace, run_operator):
    first = run_operator()
    names = [f"ws-{i}" for i in range(8)]
    for name in names:
        apply(kube_client, tuning_workspace(name, namespace))
    # Kill -9 as soon as the first Job exists: the other Workspaces are somewhere mid-reconcile.
    wait_for(lambda: jobs(kube_client, namespace), 60, "the first data Job", interval=0.05)
    first.stop(signal.SIGKILL)
    before = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs(kube_client, namespace)}
    assert 1 <= len(before) <= len(names)
    run_operator()
    for name in names:
        ws = wait_status(kube_client, namespace, name, checking_data, 60, f"{name} checking its data")
        assert condition(ws, "WorkspaceSucceeded")["reason"] == "DataCheckRunning"
    after = jobs(kube_client, namespace)
    assert sorted(j["metadata"]["name"] for j in after) == sorted(f"{n}-data" for n in names)
    kept = {j["metadata"]["name"]: j["metadata"]["uid"] for j in after}
    assert all(kept[name] == uid for name, uid in before.items())  # adopted, not recreated


class CountingKube(Kube):
    conflicts = 0

    def request(self, *args, **kwargs):
        try:
            return super().request(*args, **kwargs)
        except KubeError as err:
            if err.conflict:
                self.conflicts += 1
            raise


def test_status_write_rereads_and_retries_on_conflict(kube_client, namespace, control_plane, workspace_crd):
    apply(kube_client, tuning_workspace("conflicted", namespace))
    stale = get_workspace(kube_client, namespace, "conflicted")
    kube = CountingKube(Kube.from_environment(str(control_plane.kubeconfig)).api)
    ctl = Controller(kube, Settings(), lambda *a: None)
    cond = c.condition(c.JOB_STARTED, False, "Testing", "written despite conflicts", 1)
    for i in range(5):
        # Another writer changes the Workspace (labels, so its resourceVersion) before each write, so the
        # write's first attempt with the stale object conflicts; a busy writer thread instead could win
        # every retry on a loaded machine (it failed CI once).
        kube_json(
            kube_client,
            "PATCH",
            f"{API}/namespaces/{namespace}/workspaces/conflicted",
            {"metadata": {"labels": {"touched": str(i + 1)}}},
            content_type="application/merge-patch+json",
        )
        write_status(ctl, stale, StatusUpdate("tuning", {"phase": f"P{i}"}, (cond,), "Pending"))
    ws = get_workspace(kube_client, namespace, "conflicted")
    assert ws["status"]["tuning"]["phase"] == "P4"
    assert condition(ws, "JobStarted")["message"] == "written despite conflicts"
    assert int(ws["metadata"]["labels"]["touched"]) > 1
    assert kube.conflicts >= 1  # the first write used the stale resourceVersion


def test_a_revisions_phase_only_moves_forward_and_each_transition_is_one_event(
    kube_client, namespace, control_plane, workspace_crd
):
    """What concurrent reconciles at a Job's completion produce: phases computed from reads older than
    the stored status (Training after Pushing, Pending after Succeeded). The demo's Events once read
    Pending, Training, Pushing, Training, Succeeded, Pending, Succeeded."""
    apply(kube_client, tuning_workspace("flapping", namespace))
    posted: list[str] = []
    ctl = Controller(
        Kube.from_environment(str(control_plane.kubeconfig)),
        Settings(),
        lambda _o, _t, reason, _m: posted.append(reason),
    )
    stored = []
    for phase in (
        "Pending",
        "Training",
        "Pushing",
        "Training",
        "Succeeded",
        "Pending",
        "Succeeded",
        "Training",
    ):
        stale = get_workspace(kube_client, namespace, "flapping")
        section = {"revision": "r1", "phase": phase, "message": f"now {phase}"}
        write_status(ctl, stale, StatusUpdate("tuning", section, (), "Running", announce=True))
        stored.append(get_workspace(kube_client, namespace, "flapping")["status"]["tuning"]["phase"])
    assert stored == [
        "Pending",
        "Training",
        "Pushing",
        "Pushing",
        "Succeeded",
        "Succeeded",
        "Succeeded",
        "Succeeded",
    ]
    assert posted == ["Pending", "Training", "Pushing", "Succeeded"]
    # a new revision starts its own sequence
    section = {"revision": "r2", "phase": "CheckingData", "message": "checking the data"}
    update = StatusUpdate("tuning", section, (), "Pending")
    write_status(ctl, get_workspace(kube_client, namespace, "flapping"), update)
    assert get_workspace(kube_client, namespace, "flapping")["status"]["tuning"]["phase"] == "CheckingData"


def _config_map(api, namespace: str, name: str, r: int) -> None:
    doc = training_config(4)
    doc["training_config"]["LoraConfig"]["r"] = r
    body = {"metadata": {"name": name}, "data": {"training_config.yaml": yaml.safe_dump(doc)}}
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)


def test_changed_config_replaces_the_job_on_purpose(kube_client, namespace, run_operator):
    run_operator()
    _config_map(kube_client, namespace, "config-a", 8)
    _config_map(kube_client, namespace, "config-b", 16)
    apply(kube_client, tuning_workspace("changing", namespace, config="config-a"))
    wait_status(kube_client, namespace, "changing", checking_data, 60, "the first data check")
    old = next(j for j in jobs(kube_client, namespace) if j["metadata"]["name"] == "changing-data")
    kube_json(
        kube_client,
        "PATCH",
        f"{API}/namespaces/{namespace}/workspaces/changing",
        {"tuning": {"config": "config-b"}},
        content_type="application/merge-patch+json",
    )

    def replaced():
        found = [j for j in jobs(kube_client, namespace) if j["metadata"]["name"] == "changing-data"]
        return found and found[0]["metadata"]["uid"] != old["metadata"]["uid"] and found[0]

    new = wait_for(replaced, 60, "the data Job replaced")
    rev = "kaito.sh/revision"
    assert new["metadata"]["annotations"][rev] != old["metadata"]["annotations"][rev]
    messages = [
        e["message"] for e in events(kube_client, namespace, "changing") if e["reason"] == "JobReplaced"
    ]
    assert any("the Workspace changed" in m for m in messages)
    ws = wait_status(
        kube_client,
        namespace,
        "changing",
        lambda w: (
            checking_data(w)
            and condition(w, "WorkspaceSucceeded")["observedGeneration"] == w["metadata"]["generation"]
        ),
        60,
        "status for generation 2",
    )
    assert ws["metadata"]["generation"] == 2
    cm = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/configmaps/changing-training-config")
    assert "r: 16" in cm["data"]["training_config.yaml"]


def test_immutable_change_refused_by_cel_and_by_the_handler(
    kube_client, namespace, control_plane, workspace_crd
):
    apply(kube_client, tuning_workspace("fixed", namespace))
    with pytest.raises(Exception) as refused:
        kube_json(
            kube_client,
            "PATCH",
            f"{API}/namespaces/{namespace}/workspaces/fixed",
            {"tuning": {"method": "qlora"}},
            content_type="application/merge-patch+json",
        )
    assert "immutable" in str(refused.value)
    # The handler's second line of defence, fed the update the API server would have refused.
    old = get_workspace(kube_client, namespace, "fixed")
    new = {**old, "tuning": {**old["tuning"], "method": "qlora"}}
    posted = []
    ctl = Controller(
        Kube.from_environment(str(control_plane.kubeconfig)), Settings(), lambda *a: posted.append(a)
    )
    plan = reconcile(ctl, new, old)  # the handler raises kopf.PermanentError(plan.why)
    assert plan is not None and plan.result is Result.INVALID and "tuning.method" in plan.why
    ws = get_workspace(kube_client, namespace, "fixed")
    assert condition(ws, "WorkspaceSucceeded")["reason"] == "ImmutableFieldChanged"
    assert ws["tuning"]["method"] == "lora" and jobs(kube_client, namespace) == []
    assert posted and posted[0][1] == "Warning"
