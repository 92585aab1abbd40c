"""What the controller managers of hack/kueue.py and hack/jobset.py share on a local control plane: the
binary hack/build-tools.sh built, the CRDs of its Go module at that same version, and a process with a
bounded lifetime that is ready when its /readyz answers.

- The CRDs come from the Go module cache (config/components/crd/bases of the module at the binary's
  version), not from a copy in the repository: one version variable in build-tools.sh moves both, and
  the generated YAML stays out of git. Building the binary downloads that module, and `go mod download`
  fetches it again if the cache was cleaned.
- The manager runs under `timeout` (bounded lifetime) with a parent-death signal (it dies with the
  process that started it) and is stopped by its PID; its log is logs/<name>.log in the state dir, its
  PID in <name>/<name>.pid there. Every port it opens is a free loopback port, so two control planes
  (a CI run and a dev run) can each run one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from hack.cluster import ControlPlane, kube_json, tool_path
from hack.processes import StackError, die_with_parent, free_port, stop_process, wait_for
from tuning_controller.kube import KubeError


@dataclass(frozen=True)
class Manager:
    """A running manager; `process` is its `timeout` wrapper, which passes SIGTERM on to it."""

    version: str
    process: subprocess.Popen
    log: Path
    health_url: str
    ready_seconds: float


def manager_binary(name: str) -> Path:
    path = tool_path(name)
    if path is None:
        raise StackError(f"{name} is not built: run hack/build-tools.sh (a cold build takes minutes)")
    return path


def binary_version(binary: Path) -> str:
    """The version build-tools.sh built (its cache folder is <name>-<version>)."""
    return binary.parent.name.removeprefix(f"{binary.name}-")


def crd_files(module: str, version: str) -> list[Path]:
    """The CRDs of Go module `module` at `version`, from the module cache (downloaded there if missing)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd="/",
    )
    if out.returncode != 0:
        raise StackError(
            f"go mod download {module}@{version} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    bases = Path(json.loads(out.stdout)["Dir"]) / "config" / "components" / "crd" / "bases"
    files = sorted(bases.glob("*.yaml"))
    if not files:
        raise StackError(f"no CRDs under {bases}")
    return files


def create_if_missing(api: k8s_client.ApiClient, path: str, body: dict) -> None:
    """POST `body` to `path`; an object of that name already there is fine."""
    try:
        kube_json(api, "POST", path, body)
    except KubeError as exc:
        if exc.status != 409:
            raise


def _tail(log: Path, lines: int = 25) -> str:
    return "\n".join(line[:600] for line in log.read_text(errors="replace").splitlines()[-lines:])


def _alive(process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        raise StackError(
            f"{log.stem} exited ({process.returncode}) during start-up; last lines of {log}:\n{_tail(log)}"
        )
    return True


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def launch(binary: Path, config: Path, plane: ControlPlane, max_seconds: int, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["timeout", "--kill-after=10", str(max_seconds), str(binary), f"--config={config}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
            preexec_fn=die_with_parent,
        )


def start_manager(
    plane: ControlPlane,
    binary: Path,
    write_config: Callable[[Path, int, int], Path],
    prepare: Callable[[k8s_client.ApiClient], object],
    max_seconds: int,
    timeout: float,
    certs_mounted: Callable[[k8s_client.ApiClient], bool] | None = None,
) -> Manager:
    """`prepare` the cluster (CRDs, namespace), start `binary` with the config that `write_config(folder,
    health_port, webhook_port)` writes (folder: <state dir>/<name>, its webhook certificate in
    folder/certs), wait until `certs_mounted` (when given: a manager whose own cert rotator fills a
    Secret that must reach folder/certs) and until its /readyz answers."""
    name = binary.name
    directory = plane.state_dir / name
    (directory / "certs").mkdir(parents=True, exist_ok=True)
    health_port, webhook_port = free_port(), free_port()
    config = write_config(directory, health_port, webhook_port)
    plane.logs_dir.mkdir(parents=True, exist_ok=True)
    log = plane.logs_dir / f"{name}.log"
    url = f"http://127.0.0.1:{health_port}/readyz"
    api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
    process = None
    try:
        prepare(api)
        started = time.monotonic()
        process = launch(binary, config, plane, max_seconds, log)
        (directory / f"{name}.pid").write_text(f"{process.pid}\n")
        running = process
        if certs_mounted is not None:
            mounted = certs_mounted
            wait_for(lambda: _alive(running, log) and mounted(api), timeout, "the webhook cert")
        wait_for(lambda: _alive(running, log) and _ready(url), timeout, f"{name} {url}", interval=0.5)
        return Manager(binary_version(binary), process, log, url, time.monotonic() - started)
    except AssertionError as exc:
        stop_process(process)
        raise StackError(f"{exc}; last lines of {log}:\n{_tail(log)}") from None
    except BaseException:
        stop_process(process)
        raise
    finally:
        api.close()


@contextmanager
def stopped_after(manager: Manager) -> Iterator[Manager]:
    """`manager` for the `with` block; stopped by PID (SIGTERM, then SIGKILL) afterwards."""
    try:
        yield manager
    finally:
        stop_process(manager.process)
