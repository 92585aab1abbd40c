"""Failures a push container meets: bad credentials, a registry that goes away, tampering, 404."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from artifacts.errors import AuthError, IntegrityError, NotFoundError, RegistryError
from artifacts.pull import inspect, pull
from artifacts.push import push
from artifacts.registry import ClientOptions
from tests.artifacts.conftest import snapshot
from tests.fixtures.registry import Registry, TokenService, launch_registry, write_docker_config
from tuning_controller.cli import main


def test_wrong_password_names_registry_and_entry_but_not_the_secret(
    adapter_dir: Path, oci_registry: Registry, tmp_path: Path
) -> None:
    config = write_docker_config(tmp_path / "bad.json", oci_registry.host, "tuner", "wrong-Pa55word")
    before = snapshot(adapter_dir)

    with pytest.raises(AuthError) as caught:
        push(adapter_dir, oci_registry.ref("auth/a"), options=ClientOptions(docker_config=config))

    message = str(caught.value)
    assert (
        oci_registry.host in message and f"entry {oci_registry.host!r}" in message and str(config) in message
    )
    assert "wrong-Pa55word" not in message
    assert base64.b64encode(b"tuner:wrong-Pa55word").decode() not in message
    assert snapshot(adapter_dir) == before


def test_missing_entry_lists_the_entries_present(
    adapter_dir: Path, oci_registry: Registry, tmp_path: Path
) -> None:
    config = write_docker_config(tmp_path / "other.json", "other.example.com", "u", "p")
    with pytest.raises(AuthError, match=r"has no entry for .*entries: other\.example\.com"):
        push(adapter_dir, oci_registry.ref("auth/b"), options=ClientOptions(docker_config=config))


def test_username_password_fields_are_accepted(
    adapter_dir: Path, oci_registry: Registry, tmp_path: Path
) -> None:
    config = tmp_path / "fields.json"
    entry = {"username": oci_registry.username, "password": oci_registry.password}
    config.write_text(json.dumps({"auths": {f"http://{oci_registry.host}/v1/": entry}}))
    assert push(adapter_dir, oci_registry.ref("auth/c"), options=ClientOptions(docker_config=config)).digest


def test_cli_failure_is_one_line_on_stderr_and_in_the_termination_log(
    adapter_dir: Path, oci_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_docker_config(tmp_path / "bad.json", oci_registry.host, "tuner", "nope")
    log = tmp_path / "termination-log"
    argv = ["push", str(adapter_dir), oci_registry.ref("auth/d"), "--docker-config", str(config)]

    assert main([*argv, "--termination-log", str(log)]) == 1

    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: registry ")
    assert log.read_text() == err.removeprefix("error: ") + "\n"
    assert "nope" not in err


def test_registry_stopped_mid_push_and_restarted_resumes_the_upload(
    oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB: 16 chunks
    size = 1 << 20
    sent: list[int] = []
    restarter: list[threading.Timer] = []

    def progress(count: int) -> None:
        sent.append(count)
        if sum(sent) >= 3 * options.chunk_bytes and not restarter:
            oci_registry.stop()
            restarter.append(threading.Timer(1.0, oci_registry.start))
            restarter[0].start()

    try:
        result = push(source, oci_registry.ref("faults/restart"), options=options, progress=progress)
    finally:
        for timer in restarter:
            timer.join()
        if oci_registry.process is None:
            oci_registry.start()

    assert restarter, "the registry was never stopped: the test did not exercise a failure"
    # Usually the upload resumes at the registry's offset (one chunk re-sent); if the registry died
    # while writing a chunk it forgets the session and the upload restarts: either way, bounded.
    assert size < sum(sent) < 2 * size
    pull(result.reference, tmp_path / "out", options=options)
    assert snapshot(tmp_path / "out") == snapshot(source)


def test_tampered_blob_is_detected_and_nothing_is_written(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    result = push(adapter_dir, oci_registry.ref("faults/tamper"), options=options)
    weights = next(
        x for x in inspect(result.reference, options=options)["layers"] if x["path"].endswith("safetensors")
    )
    blob = oci_registry.blob_path(weights["digest"])
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=weights["digest"]):
        pull(result.reference, tmp_path / "out", options=options)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_missing_tag_names_the_repository(
    oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError, match=r"repository nothing/here on registry 127\.0\.0\.1"):
        pull(oci_registry.ref("nothing/here", "v9"), tmp_path / "out", options=options)


def test_bearer_token_registry_with_password_and_with_identity_token(
    adapter_dir: Path, token_registry: Registry, tmp_path: Path
) -> None:
    assert token_registry.token_grants is not None
    password_config = write_docker_config(
        tmp_path / "password.json", token_registry.host, token_registry.username, token_registry.password
    )
    ref = token_registry.ref("bearer/a")
    pushed = push(adapter_dir, ref, options=ClientOptions(docker_config=password_config))
    assert token_registry.token_grants[-1] == "basic"

    identity_config = tmp_path / "identity.json"
    entry = {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": "refresh-token-for-tuner"}
    identity_config.write_text(json.dumps({"auths": {token_registry.host: entry}}))
    pulled = pull(ref, tmp_path / "out", options=ClientOptions(docker_config=identity_config))
    assert token_registry.token_grants[-1] == "refresh_token"
    assert pulled.digest == pushed.digest and snapshot(tmp_path / "out") == snapshot(adapter_dir)


def test_bearer_token_service_refusal_names_the_entry(
    adapter_dir: Path, token_registry: Registry, tmp_path: Path
) -> None:
    config = write_docker_config(tmp_path / "bad.json", token_registry.host, "tuner", "wrong-token-pass")
    with pytest.raises(AuthError, match=r"token service .* refused credential .*bad\.json entry") as caught:
        push(adapter_dir, token_registry.ref("bearer/b"), options=ClientOptions(docker_config=config))
    assert "wrong-token-pass" not in str(caught.value)


def test_tls_registry_needs_its_ca_bundle(adapter_dir: Path, tls_registry: Registry, tmp_path: Path) -> None:
    ref = tls_registry.ref("tls/a")
    with pytest.raises(
        RegistryError, match=r"certificate verification failed for registry 127\.0\.0\.1.*--ca-bundle"
    ):
        push(adapter_dir, ref, options=ClientOptions())

    trusted = ClientOptions(ca_bundle=str(tls_registry.ca_cert))
    pushed = push(adapter_dir, ref, options=trusted)
    assert pull(ref, tmp_path / "out", options=trusted).digest == pushed.digest


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the real registry but answers every third request with 503 (an overloaded front end)."""

    upstream: str
    count: list[int]

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        self.count[0] += 1
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.count[0] % 3 == 0:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
        answer = requests.request(
            self.command,
            self.upstream + self.path,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=30,
        )
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward


def test_server_errors_are_retried_with_backoff(
    adapter_dir: Path, oci_registry: Registry, tmp_path: Path
) -> None:
    handler = type("Proxy", (_FlakyProxy,), {"upstream": f"http://{oci_registry.host}", "count": [0]})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{proxy.server_address[1]}"
        config = write_docker_config(
            tmp_path / "proxy.json", host, oci_registry.username, oci_registry.password
        )
        options = ClientOptions(docker_config=config, chunk_bytes=64 * 1024, backoff_s=0.01)
        pushed = push(adapter_dir, f"{host}/flaky/a:v1", options=options)
        pulled = pull(f"{host}/flaky/a:v1", tmp_path / "out", options=options)
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)

    assert handler.count[0] >= 30  # many requests, so about ten 503s were met and survived
    assert pulled.digest == pushed.digest and snapshot(tmp_path / "out") == snapshot(adapter_dir)


def test_a_token_realm_on_a_metadata_address_gets_no_credentials(tmp_path: Path) -> None:
    """A registry (or someone in its path) that names a cloud metadata address as its token service gets
    nothing sent there: the realm must be https (http only for a plain-HTTP registry) on a host that
    could be a registry."""
    service = TokenService(tmp_path)
    try:
        config = service.auth_config().replace(service.realm, "http://169.254.169.254/latest/api/token")
        (tmp_path / "registry").mkdir()
        registry = launch_registry(tmp_path / "registry", with_auth=True, token_auth=config)
        try:
            docker_config = write_docker_config(tmp_path / "c.json", registry.host, "user", "s3cret")
            options = ClientOptions(docker_config=docker_config)
            with pytest.raises(AuthError, match=r"169\.254\.169\.254.*link-local"):
                pull(registry.ref("realm/check"), tmp_path / "out", options=options)
        finally:
            registry.stop()
    finally:
        service.stop()
