"""Controller test fixtures: the operator as a child process, a data server on the node, Workspace helpers.

The operator and the data server come from hack/operators.py and hack/servers.py (shared with the demo).
- `run_operator(**env)` (factory, one per module): ``python -m tuning_controller.operator`` against the
  local cluster, allowing input URLs on loopback and the node and plain HTTP to `node_registry`; the
  tests of a module that ask for the same settings share one process; stopped (by PID) at teardown.
- `chart_operator(**settings)` (factory): the operator as the chart's Deployment on the node.
- `data_server`: a ThreadingHTTPServer on the node's address serving a temporary folder.
- `make_parquet(path, rows)`, `tuning_workspace(...)`, `get_workspace(...)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.operators import (
    ChartOperator,
    Operator,
    install_chart,
    local_operator_settings,
    model_registry,
    start_operator,
)
from hack.servers import start_data_server
from tests.fixtures.cluster import kube_json, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
API = "/apis/kaito.sh/v1beta1"


class ModuleOperator:
    """The operator of one test module. One runs at a time, since two would both reconcile every
    Workspace: a call with the settings of the running one, still alive, gets that one (the tests of a
    module that ask for the same settings share one process); other settings, or a test that stopped
    it, start a new one."""

    def __init__(self, kubeconfig: Path, logs: Path, defaults: dict[str, str]):
        self.kubeconfig, self.logs, self.defaults = kubeconfig, logs, defaults
        self.started: list[Operator] = []

    def __call__(self, **env: str) -> Operator:
        env = {**self.defaults, **env}
        current = self.running()
        if current is not None and current.env == env:
            return current
        self.stop()
        op = start_operator(self.kubeconfig, self.logs / f"operator-{len(self.started)}.log", **env)
        self.started.append(op)
        return op

    def running(self) -> Operator | None:
        last = self.started[-1] if self.started else None
        return last if last is not None and last.process.poll() is None else None

    def stop(self) -> None:
        for op in self.started:
            op.stop()


_MODULE_OPERATORS: dict[str, ModuleOperator] = {}


@pytest.fixture(scope="module")
def run_operator(
    request, control_plane, workspace_crd, node, node_registry, tiny_model, tmp_path_factory
) -> Iterator[ModuleOperator]:
    defaults = {
        "KAITO_TUNE_INSECURE_REGISTRIES": f"{node_registry.host},{node.image_registry}",
        "KAITO_TUNE_MODEL_REGISTRY": model_registry(node),
    }
    operators = ModuleOperator(control_plane.kubeconfig, tmp_path_factory.mktemp("operator"), defaults)
    _MODULE_OPERATORS[request.module.__name__] = operators
    try:
        yield operators
    finally:
        operators.stop()
        del _MODULE_OPERATORS[request.module.__name__]


@pytest.fixture(autouse=True)
def no_operator_unless_asked(request) -> None:
    """A test that does not ask for `run_operator` runs without the module's operator (it plays the
    controller's part itself, or checks what happens with none)."""
    if "run_operator" not in request.fixturenames and request.module.__name__ in _MODULE_OPERATORS:
        _MODULE_OPERATORS[request.module.__name__].stop()


@pytest.fixture
def chart_operator(kube_client, namespace, workspace_crd, node, node_registry, tiny_model) -> Iterator:
    """Factory: the operator as the chart's Deployment in the controller image on the node (settings as
    chart values on top of input URLs on the node and plain HTTP to `node_registry`); uninstalled after."""
    installed: list[ChartOperator] = []

    def install(**settings) -> ChartOperator:
        values = local_operator_settings(node, node_registry.host, **settings)
        operator = install_chart(kube_client, f"{namespace}-operator", {"settings": values})
        installed.append(operator)
        return operator

    try:
        yield install
    finally:
        for operator in installed:
            operator.uninstall()


GPUS = "nvidia.com~1gpu"  # JSON-patch spelling of nvidia.com/gpu
SHARED_CLASS = "local-path-shared"  # hack/addons.yaml: ReadWriteMany on the one node


@pytest.fixture
def four_gpus(kube_client, node) -> Iterator[None]:
    """The node advertises 4 GPUs for the test, 1 again afterwards."""

    def advertise(count: int) -> None:
        patch = [
            {"op": "add", "path": f"/status/{part}/{GPUS}", "value": str(count)}
            for part in ("capacity", "allocatable")
        ]
        kube_json(
            kube_client,
            "PATCH",
            f"/api/v1/nodes/{node.name}/status",
            patch,
            content_type="application/json-patch+json",
        )

    advertise(4)
    try:
        yield
    finally:
        advertise(1)


@pytest.fixture
def multi_node_workload() -> str:
    """KAITO_TUNE_MULTI_NODE_WORKLOAD of multi_node_setup's operator: the Indexed Job, whatever the cluster
    serves (a module that tests JobSet overrides it)."""
    return "job"


@pytest.fixture
def multi_node_setup(
    kube_client, namespace, node_registry, run_operator, data_server, four_gpus, multi_node_workload
) -> str:
    """A multi-node tuning's world on the one node: 32 rows served, a push secret, 4 GPUs, results on the
    ReadWriteMany class, and the operator; returns the data's URL."""
    from tests.controller.test_end_to_end import create_push_secret

    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=32)
    run_operator(
        KAITO_TUNE_RESULTS_STORAGE_CLASS=SHARED_CLASS,
        KAITO_TUNE_PROGRESS_INTERVAL_SECONDS="1",
        KAITO_TUNE_RESYNC_SECONDS="5",
        KAITO_TUNE_MULTI_NODE_WORKLOAD=multi_node_workload,
    )
    create_push_secret(kube_client, namespace, node_registry)
    return f"{base_url}/train.parquet"


@pytest.fixture
def data_server(tmp_path, node) -> Iterator[tuple[str, Path]]:
    """(base URL, folder): files written into the folder are served at base URL + name, on the node's
    address so that pods fetch them."""
    server = start_data_server(tmp_path / "served", bind=node.ip)
    try:
        yield server.url, server.root
    finally:
        server.stop()


def make_parquet(path: Path, rows: int = 24, bad_rows: tuple[int, ...] = ()) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = []
    for i in range(rows):
        if i in bad_rows:
            data.append({"messages": [{"role": "user", "content": f"question {i} without an answer"}]})
        else:
            data.append(
                {
                    "messages": [
                        {"role": "user", "content": f"what is {i} plus {i}?"},
                        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                    ]
                }
            )
    pq.write_table(pa.Table.from_pylist(data), path)
    return path


def tuning_workspace(
    name: str,
    namespace: str,
    *,
    urls: list[str] | None = None,
    output: dict | None = None,
    config: str = "",
    labels: dict | None = None,
    instance_type: str = "",
    method: str = "lora",
) -> dict:
    tuning = {
        "preset": {"name": "tiny-llama"},
        "method": method,
        "input": {"urls": urls or ["http://127.0.0.1:9/none.parquet"]},
        "output": output or {"image": "127.0.0.1:5000/adapters/x:v1", "imagePushSecret": "push-secret"},
    }
    if config:
        tuning["config"] = config
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "resource": {"labelSelector": {"matchLabels": {"apps": "phi-3"}}},
        "tuning": tuning,
    }
    if instance_type:
        ws["resource"]["instanceType"] = instance_type
    return ws


def apply(api, obj: dict) -> dict:
    meta = obj["metadata"]
    return kube_json(api, "POST", f"{API}/namespaces/{meta['namespace']}/workspaces", obj)


def get_workspace(api, namespace: str, name: str) -> dict:
    return kube_json(api, "GET", f"{API}/namespaces/{namespace}/workspaces/{name}")


def tuning_status(api, namespace: str, name: str) -> dict:
    return (get_workspace(api, namespace, name).get("status") or {}).get("tuning") or {}


def condition(ws: dict, type_: str) -> dict:
    return next((c for c in (ws.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def jobs(api, namespace: str) -> list[dict]:
    return kube_json(api, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs").get("items") or []


def events(api, namespace: str, name: str) -> list[dict]:
    found = kube_json(api, "GET", f"/api/v1/namespaces/{namespace}/events").get("items") or []
    return [e for e in found if e.get("involvedObject", {}).get("name") == name]


def dump(api, namespace: str, name: str) -> str:
    """What to print when a wait fails: the Workspace status and the Jobs."""
    try:
        ws = get_workspace(api, namespace, name)
    except Exception as exc:  # the failure message must still come out
        return f"cannot read the Workspace: {exc}"
    job_states = {j["metadata"]["name"]: j.get("status") for j in jobs(api, namespace)}
    return json.dumps({"status": ws.get("status"), "jobs": job_states}, indent=1)[-6000:]


def wait_status(api, namespace: str, name: str, predicate, timeout: float, what: str) -> dict:
    def check():
        ws = get_workspace(api, namespace, name)
        return ws if predicate(ws) else None

    try:
        return wait_for(check, timeout, what, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump(api, namespace, name)}") from None


def now() -> float:
    return time.monotonic()


@pytest.fixture(scope="session")
def nodeclaim_crd(kube_client) -> str:
    """karpenter.sh NodeClaims served (tests/controller/nodeclaim-crd.yaml); yields the collection path."""
    import yaml

    crd = yaml.safe_load((Path(__file__).parent / "nodeclaim-crd.yaml").read_text())
    kube_json(
        kube_client,
        "PATCH",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
        "?fieldManager=kaito-tune-tests&force=true",
        crd,
        content_type="application/apply-patch+yaml",
    )
    path = "/apis/karpenter.sh/v1/nodeclaims"

    def served() -> bool:
        try:
            kube_json(kube_client, "GET", path)
        except Exception:
            return False
        return True

    wait_for(served, 30, "nodeclaims.karpenter.sh to be served")
    return path


def nodeclaims_of(api, path: str, namespace: str, workspace: str) -> list[dict]:
    selector = f"kaito.sh/workspace={workspace},kaito.sh/workspacenamespace={namespace}"
    found = kube_json(api, "GET", f"{path}?labelSelector={selector}")
    return found.get("items") or []


def claim_path(api, namespace: str, claim: str) -> Path:
    """Where the node keeps a bound claim's files (local-path-provisioner's hostPath volume)."""
    bound = kube_json(api, "GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
    volume = kube_json(api, "GET", f"/api/v1/persistentvolumes/{bound['spec']['volumeName']}")
    source = volume["spec"].get("hostPath") or volume["spec"]["local"]
    return Path(source["path"])
