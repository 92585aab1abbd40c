"""The train container's progress patches: the status subresource, throttled, never fatal; the held-out
evaluation beside the progress.

The API server is replaced by a recorder here (the real one is in tests/controller/test_end_to_end.py,
where the trainer patches a Workspace through its ServiceAccount)."""

from __future__ import annotations

import logging
from dataclasses import replace

from contract.reports import ProgressEvent, evaluation_status
from trainer.status_sink import WorkspaceRef, WorkspaceStatusSink, status_sinks_from_env

WS = WorkspaceRef("kaito.sh/v1beta1", "team-a", "my-ws")


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.fail = fail

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.fail:
            raise ConnectionError("apiserver unreachable")


def event(kind: str, step: int) -> ProgressEvent:
    return ProgressEvent(kind, step=step, total_steps=10, loss=1.0)


def test_merge_patch_of_the_status_and_progress_throttled():
    api = Recorder()
    sink = WorkspaceStatusSink(api, WS, interval_s=1000)  # capped at 30 s
    assert sink.interval_s == 30
    for e in [
        event("start", 0),
        event("progress", 1),
        event("progress", 2),
        event("eval", 2),
        event("done", 10),
    ]:
        sink.emit(e)
    assert [c[0][5]["status"]["tuning"]["progress"]["event"] for c in api.calls] == ["start", "eval", "done"]
    args, kwargs = api.calls[-1]
    assert args[:5] == ("kaito.sh", "v1beta1", "team-a", "workspaces", "my-ws")
    assert args[5]["status"]["tuning"]["progress"]["percent"] == 100
    assert kwargs["_content_type"] == "application/merge-patch+json"


def test_a_failed_patch_is_logged_not_raised(caplog):
    sink = WorkspaceStatusSink(Recorder(fail=True), WS)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        sink.emit(event("start", 0))
    assert "cannot patch Workspace team-a/my-ws status: apiserver unreachable" in caplog.text


def test_no_sink_without_a_workspace_or_outside_a_cluster(caplog):
    assert status_sinks_from_env({}) == []
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert status_sinks_from_env({"KAITO_WORKSPACE_NAME": "my-ws"}) == []
    assert "no in-cluster credentials" in caplog.text


def test_the_evaluation_is_patched_beside_the_progress_when_an_event_carries_it():
    api = Recorder()
    sink = WorkspaceStatusSink(api, WS)
    base = evaluation_status(6.69, None, 7)
    sink.emit(replace(event("start", 0), evaluation=base))
    sink.emit(event("eval", 5))
    sink.emit(replace(event("evaluated", 10), evaluation=evaluation_status(6.69, 0.42, 7)))
    tunings = [c[0][5]["status"]["tuning"] for c in api.calls]
    assert tunings[0]["evaluation"] == base and "evaluation" not in tunings[1]
    assert tunings[2]["evaluation"]["summary"] == "6.69->0.42"
    assert tunings[2]["progress"]["event"] == "evaluated"
