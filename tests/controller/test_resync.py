"""The resync: a key is called once per arming, after its delay; arming again postpones unless told not
to; a cancelled key is not called."""

from __future__ import annotations

import threading
import time

from tuning_controller.resync import Resync


def test_due_keys_are_called_once_postponed_or_kept_and_cancelled():
    called: list[tuple[str, float]] = []
    lock = threading.Lock()
    start = time.monotonic()

    def due(key: str) -> None:
        with lock:
            called.append((key, time.monotonic() - start))

    resync = Resync(due, workers=2)
    resync.start()
    try:
        resync.arm("a", 0.2)
        resync.arm("a", 0.5)  # postponed
        resync.arm("b", 0.2)
        resync.arm("b", 0.5, postpone=False)  # the earlier deadline stays
        resync.arm("c", 0.2)
        resync.cancel("c")
        time.sleep(1.0)
    finally:
        resync.stop()
    when = dict(called)
    assert sorted(when) == ["a", "b"] and len(called) == 2
    assert 0.45 <= when["a"] < 0.9 and 0.15 <= when["b"] < 0.45
    assert resync.armed("a") is None


def test_a_failing_call_does_not_stop_the_others():
    seen: list[str] = []

    def due(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        seen.append(key)

    resync = Resync(due)
    resync.start()
    try:
        resync.arm("bad", 0.05)
        resync.arm("good", 0.1)
        time.sleep(0.5)
    finally:
        resync.stop()
    assert seen == ["good"]


def test_a_child_event_whose_workspace_cannot_be_read_arms_the_resync(monkeypatch):
    """kopf does not retry event handlers: when a Job's Workspace cannot be read (the connection dropped:
    urllib3's error, not a KubeError), its resync is armed instead of the event being lost."""
    from urllib3.exceptions import MaxRetryError

    from tuning_controller.handlers import runtime
    from tuning_controller.handlers import tuning as handlers
    from tuning_controller.settings import Settings

    class Unreachable:
        def get(self, *args):
            raise MaxRetryError(None, "/apis/kaito.sh/v1beta1/namespaces/team/workspaces/ws", "refused")

    ctl = runtime.Controller(Unreachable(), Settings(), lambda *a: None)  # type: ignore[arg-type]
    monkeypatch.setattr(runtime, "_controller", ctl)
    armed: list[tuple[str, float]] = []
    monkeypatch.setattr(handlers._resync, "arm", lambda key, delay, postpone=True: armed.append((key, delay)))
    job = {"kind": "Job", "metadata": {"namespace": "team", "labels": {"kaito.sh/workspace": "ws"}}}
    handlers._follow(job, runtime.log)
    assert armed == [("team/ws", runtime.RETRY_SECONDS)]
    handlers._follow({"kind": "Job", "metadata": {"namespace": "team", "labels": {}}}, runtime.log)
    assert len(armed) == 1  # not a Workspace's child: nothing to do


def test_pod_events_of_init_containers_are_news_and_of_unscheduled_pods_are_not():
    """The one-node training pod trains in an init container (its phase stays Pending until push
    starts): its init containers' starts and ends must reach the reconcile, a pod waiting for a node not."""
    from tuning_controller.handlers.tuning import _pod_has_news

    def pod(phase: str, *init_states: dict) -> dict:
        statuses = [{"name": f"c{i}", "state": state} for i, state in enumerate(init_states)]
        return {"status": {"phase": phase, "initContainerStatuses": statuses}}

    waiting = {"waiting": {"reason": "PodInitializing"}}
    assert not _pod_has_news(pod("Pending"))
    assert not _pod_has_news(pod("Pending", waiting, waiting))
    assert _pod_has_news(pod("Pending", {"running": {}}, waiting))  # fetch-data started
    assert _pod_has_news(pod("Pending", {"terminated": {"exitCode": 0}}, {"running": {}}))  # train started
    assert _pod_has_news(pod("Running")) and _pod_has_news(pod("Failed"))
