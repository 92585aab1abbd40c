"""The servers pods and tests reach: a real OCI registry (Debian's docker-registry) and a data file server."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from hack.processes import StackError, free_port, stop_process

REGISTRY_BIN = "docker-registry"
# A registry outlives an aborted session (pytest killed with -9) by at most this: coreutils' timeout
# runs it, and passes our SIGTERM on when it is stopped by PID.
REGISTRY_MAX_SECONDS = 4 * 3600
REGISTRY_USERNAME = "tuner"
REGISTRY_PASSWORD = "s3cret-pass"  # a loopback-only registry made for this run; never a real credential


# --- OCI registry ------------------------------------------------------------------------------------


def _registry_config(storage: Path, host: str, auth: str, tls: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: {host}\n  secret: fixed-test-secret-for-resumable-uploads\n{tls}"
        f"{auth}"
    )


@dataclass
class Registry:
    """A running loopback registry (Debian's `docker-registry`); ``stop()``/``start()`` keep the same port
    and storage, so a test can stop it mid-push and start "the same registry" again."""

    workdir: Path
    port: int
    bind: str = "127.0.0.1"  # the local node's address when pods use the registry
    username: str | None = None
    password: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    token_grants: list[str] | None = None  # token registries: how each token was obtained
    ca_cert: Path | None = None  # TLS registries: the self-signed certificate to trust

    @property
    def host(self) -> str:
        return f"{self.bind}:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def ref(self, repository: str, tag: str = "v1") -> str:
        return f"{self.host}/{repository}:{tag}"

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (for tamper tests)."""
        algorithm, hexdigest = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest / "data"

    def docker_config_json(self) -> str:
        """A ``.dockerconfigjson`` holding this registry's credentials."""
        return docker_config_json(self.host, self.username or "", self.password or "")

    def start(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [
                "timeout",
                "--kill-after=10",
                str(REGISTRY_MAX_SECONDS),
                REGISTRY_BIN,
                "serve",
                str(self.workdir / "config.yml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()}")
            try:
                scheme = "https" if self.ca_cert else "http"
                requests.get(f"{scheme}://{self.host}/v2/", timeout=1, verify=str(self.ca_cert or True))
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise StackError(f"docker-registry did not answer on {self.host} within 15 s")

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.process = None


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl."""
    key, cert = workdir / "tls.key", workdir / "tls.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def launch_registry(
    workdir: Path, with_auth: bool, token_auth: str = "", tls: bool = False, bind: str = "127.0.0.1"
) -> Registry:
    """Start a registry on `bind`: htpasswd basic auth (user REGISTRY_USERNAME), none, or ``token_auth`` (an
    ``auth: token:`` YAML block); with ``tls`` it serves https with a fresh self-signed certificate."""
    if shutil.which(REGISTRY_BIN) is None:
        raise StackError(f"{REGISTRY_BIN} is not installed: apt-get install docker-registry apache2-utils")
    workdir.mkdir(parents=True, exist_ok=True)
    auth = token_auth
    if with_auth and not token_auth:
        htpasswd = workdir / "htpasswd"
        line = subprocess.run(
            ["htpasswd", "-Bbn", REGISTRY_USERNAME, REGISTRY_PASSWORD],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        htpasswd.write_text(line.strip() + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {htpasswd}\n"
    registry = Registry(
        workdir=workdir,
        port=free_port(),
        bind=bind,
        username=REGISTRY_USERNAME if with_auth else None,
        password=REGISTRY_PASSWORD if with_auth else None,
    )
    tls_block = ""
    if tls:
        registry.ca_cert, key = self_signed(workdir)
        tls_block = f"  tls:\n    certificate: {registry.ca_cert}\n    key: {key}\n"
    (workdir / "config.yml").write_text(_registry_config(registry.storage, registry.host, auth, tls_block))
    registry.start()
    return registry


def docker_config_json(host: str, username: str, password: str) -> str:
    """A ``.dockerconfigjson`` (what a ``kubernetes.io/dockerconfigjson`` Secret holds) for one registry."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}})


def write_docker_config(path: Path, host: str, username: str, password: str) -> Path:
    """Write a ``.dockerconfigjson`` as a ``kubernetes.io/dockerconfigjson`` Secret mounts it."""
    path.write_text(docker_config_json(host, username, password))
    return path


# --- data file server --------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@dataclass
class DataServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving `root`: a file written there is at ``url + "/" + name``."""

    root: Path
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_data_server(root: Path, bind: str = "127.0.0.1") -> DataServer:
    """Serve `root` on `bind` (the local node's address when pods fetch from it)."""
    root.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer((bind, 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return DataServer(root, server, thread)
