"""The pushed adapter's image@digest in the Workspace's MLflow run (tuning_controller.run_tags): when the
controller tags a run, the credentials it sends, the status record, and the REST call against a real
``mlflow server`` (tests/fixtures/mlflow.py), one without auth and one with MLflow's basic-auth app, read
back through MLflow's client; the bounded retry against a listener that drops every connection."""

from __future__ import annotations

import base64
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from contract.reports import tracking_line, tracking_status
from hack.processes import free_port
from tests.fixtures.mlflow import MlflowServer, start_mlflow
from tuning_controller.run_tags import (
    ADAPTER_TAG,
    ATTEMPTS,
    AdapterTag,
    adapter_tag_due,
    auth_headers,
    set_adapter_tag,
    tracking_patch,
)

DIGEST = "sha256:" + "ab" * 32


def succeeded(image: str = "registry.example:5000/adapters/phi:v1", **tracking) -> dict:
    run = {**tracking_status("http://mlflow.example:5000", "kaito-tune", "run-1"), **tracking}
    return {"phase": "Succeeded", "adapter": {"image": image, "digest": DIGEST}, "tracking": run}


def test_a_pushed_tracked_adapter_is_due_with_its_digest_not_its_tag():
    tag = adapter_tag_due(succeeded())
    assert tag == AdapterTag(
        "http://mlflow.example:5000", "run-1", f"registry.example:5000/adapters/phi@{DIGEST}"
    )
    # a registry port is not a tag
    assert adapter_tag_due(succeeded("localhost:5000/phi")).reference == f"localhost:5000/phi@{DIGEST}"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"phase": "Pushing"}, "not pushed yet"),
        ({"adapter": None}, "no adapter (a volume output, or a gate that held the push)"),
        ({"tracking": None}, "not tracked"),
        ({"tracking": tracking_status("http://m:5000", "e", None)}, "no run was made"),
        ({"tracking": tracking_status("http://m:5000", "e", "r", "unreachable")}, "tracking stopped"),
        ({"tracking": {**tracking_status("http://m:5000", "e", "r"), "adapter": "x@sha256:1"}}, "done"),
    ],
)
def test_nothing_is_due(change, why):
    assert adapter_tag_due({**succeeded(), **change}) is None, why


def test_credentials_follow_mlflow_clients_rules():
    assert auth_headers({}) == {}
    assert auth_headers({"MLFLOW_TRACKING_USERNAME": "u"}) == {}  # a user without a password is no auth
    basic = auth_headers({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"})
    assert basic == {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    both = {"MLFLOW_TRACKING_TOKEN": "t", "MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}
    assert auth_headers(both) == {"Authorization": "Bearer t"}


def test_the_record_is_conditional_and_says_what_happened():
    ws = {"metadata": {"resourceVersion": "42"}}
    tag = AdapterTag("http://m:5000", "run-1", f"r/phi@{DIGEST}")
    done = tracking_patch(ws, tag, None)
    assert done == {
        "metadata": {"resourceVersion": "42"},
        "status": {"tuning": {"tracking": {"adapter": f"r/phi@{DIGEST}"}}},
    }
    failed = tracking_patch(ws, tag, "http://m:5000 answered 404: no run")["status"]["tuning"]["tracking"]
    assert failed == {
        "error": "the adapter's digest was not logged to the run: http://m:5000 answered 404: no run"
    }
    shown = tracking_line({**tracking_status("http://m:5000", "e", "run-1"), "adapter": f"r/phi@{DIGEST}"})
    assert shown.endswith(f"; tagged with the adapter r/phi@{DIGEST}"), shown


@pytest.mark.slow
def test_the_run_is_tagged_in_a_real_tracking_server(mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment("run-tags")
    run = client.create_run(experiment, run_name="tuned")
    tag = AdapterTag(mlflow_server.uri, run.info.run_id, f"registry.example/adapters/phi@{DIGEST}")
    set_adapter_tag(tag, env={})
    assert client.get_run(run.info.run_id).data.tags[ADAPTER_TAG] == tag.reference

    with pytest.raises(RuntimeError, match="answered 404"):
        set_adapter_tag(AdapterTag(mlflow_server.uri, "0" * 32, tag.reference), env={})
    with pytest.raises(RuntimeError, match="ConnectionError"):  # nothing listens there
        set_adapter_tag(AdapterTag(f"http://127.0.0.1:{free_port()}", "r", tag.reference), env={})


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = start_mlflow(tmp_path_factory.mktemp("mlflow-auth"), credentials=("tagger", "loopback-only-1"))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_the_tag_reaches_a_server_that_demands_credentials_only_with_them(auth_server, monkeypatch):
    for key, value in auth_server.env().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(auth_server.uri)
    run = client.create_run(client.create_experiment("run-tags-auth"), run_name="tuned")
    tag = AdapterTag(auth_server.uri, run.info.run_id, f"registry.example/adapters/phi@{DIGEST}")

    with pytest.raises(RuntimeError, match="answered 401"):
        set_adapter_tag(tag, env={})
    wrong = {**auth_server.env(), "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    with pytest.raises(RuntimeError, match="answered 401"):
        set_adapter_tag(tag, env=wrong)
    assert ADAPTER_TAG not in client.get_run(run.info.run_id).data.tags

    set_adapter_tag(tag, env=auth_server.env())
    assert client.get_run(run.info.run_id).data.tags[ADAPTER_TAG] == tag.reference


@pytest.mark.slow
def test_a_dropped_connection_is_retried_a_bounded_number_of_times():
    """A listener that accepts and closes every connection: the call gives up after ATTEMPTS tries and
    the backoff between them (0 + 2 + 4 s), and says why."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[float] = []

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            accepted.append(time.monotonic())
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="ConnectionError"):
            set_adapter_tag(AdapterTag(f"http://127.0.0.1:{port}", "r", f"r/phi@{DIGEST}"), env={})
    finally:
        listener.close()
    assert len(accepted) == ATTEMPTS, accepted
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(accepted)]
    assert gaps[0] < 1 and 1.9 <= gaps[1] < 3 and 3.9 <= gaps[2] < 5, gaps
    assert time.monotonic() - started < 10
