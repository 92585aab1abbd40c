"""Condition helpers: transitions keep their time only when the status really changes."""

from tuning_controller import conditions as c


def test_set_condition_keeps_transition_time_when_status_unchanged():
    first = c.condition(c.JOB_STARTED, True, c.REASON_JOB_STARTED, "started", 1, now="2026-01-01T00:00:00Z")
    again = c.condition(c.JOB_STARTED, True, c.REASON_JOB_STARTED, "still", 2, now="2026-01-02T00:00:00Z")
    out = c.set_condition([first], again)
    assert out == [{**again, "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    assert out[0]["observedGeneration"] == 2 and out[0]["message"] == "still"


def test_set_condition_transition_and_append_keep_order():
    ready = c.condition(c.RESOURCE_READY, True, c.REASON_RESOURCE_READY, "", 1, now="t0")
    started = c.condition(c.JOB_STARTED, True, c.REASON_JOB_STARTED, "", 1, now="t0")
    failed = c.condition(c.RESOURCE_READY, False, c.REASON_RESOURCE_FAILED, "gone", 1, now="t1")
    out = c.set_conditions(
        [ready, started], [failed, c.condition(c.WORKSPACE_SUCCEEDED, "Unknown", "x", "", 1)]
    )
    assert [x["type"] for x in out] == [c.RESOURCE_READY, c.JOB_STARTED, c.WORKSPACE_SUCCEEDED]
    assert out[0]["lastTransitionTime"] == "t1" and out[0]["status"] == "False"
    assert c.is_true(out, c.JOB_STARTED) and not c.is_true(out, c.RESOURCE_READY)
    assert c.find(out, c.NODECLAIM_READY) is None


def test_same_conditions_ignores_only_transition_time():
    a = [c.condition(c.JOB_STARTED, True, "r", "m", 1, now="t0")]
    assert c.same_conditions(a, [c.condition(c.JOB_STARTED, True, "r", "m", 1, now="t9")])
    assert not c.same_conditions(a, [c.condition(c.JOB_STARTED, True, "r", "m", 2, now="t0")])


def test_bad_status_word_is_refused():
    try:
        c.condition(c.JOB_STARTED, "yes", "r", "m", 1)
    except ValueError as exc:
        assert "True, False or Unknown" in str(exc)
    else:
        raise AssertionError("expected ValueError")
