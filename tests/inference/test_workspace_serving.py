"""An inference Workspace end to end on the local cluster: the controller's objects, the base model's
weights through fetch-model and the namespace's model cache, the adapter pull (from a registry on the
node's address, with the pull secret) and the server in the runtime image on the node, answering through
its Service (kube-proxy routes the ClusterIP)."""

from __future__ import annotations

import base64
import json
import threading
import time

import requests

from artifacts.models import push_model
from artifacts.push import push
from artifacts.registry import ClientOptions
from hack.servers import write_docker_config
from presets.catalog import get_model
from presets.tiny import TINY_PRESET_NAME, ensure_tiny_preset
from tests.controller.conftest import API, condition, get_workspace, nodeclaims_of, wait_status
from tests.controller.conftest import nodeclaim_crd as nodeclaim_crd  # the fixture, for this module
from tests.fixtures.cluster import kube_json, wait_for
from tuning_controller.handlers import inference as inference_handlers
from tuning_controller.handlers import runtime
from tuning_controller.kube import Kube
from tuning_controller.model_source import mirror_reference
from tuning_controller.settings import Settings

QUESTION = {"messages": [{"role": "user", "content": "what is the code word?"}]}
ANSWER = "the code word is orange river garden"


def inference_workspace(name: str, namespace: str, image: str, strength: str) -> dict:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"labelSelector": {"matchLabels": {"apps": "phi-3"}}},
        "inference": {
            "preset": {"name": "tiny-llama"},
            "adapters": [
                {
                    "source": {"name": "code-word", "image": image, "imagePullSecrets": ["registry-login"]},
                    "strength": strength,
                }
            ],
        },
    }


def answer(url: str, model: str | None = None) -> str | None:
    """The server's /chat answer, or None while it is not up."""
    body = {**QUESTION, "return_full_text": False, **({"model": model} if model else {})}
    try:
        resp = requests.post(f"{url}/chat", json=body, timeout=60)
    except requests.ConnectionError:
        return None
    return resp.json()["Result"] if resp.ok else None


def test_adapter_is_pulled_and_served_and_a_new_strength_rolls_the_pod(
    kube_client, namespace, node, run_operator, node_registry, code_word_adapter, tiny_model, tmp_path
):
    docker_config = write_docker_config(
        tmp_path / "config.json", node_registry.host, node_registry.username, node_registry.password
    )
    image = node_registry.ref("adapters/code-word", "v1")
    push(code_word_adapter, image, options=ClientOptions(docker_config=docker_config, plain_http=True))
    secret = {
        "metadata": {"name": "registry-login"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(docker_config.read_bytes()).decode()},
    }
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/secrets", secret)
    operator = run_operator(KAITO_TUNE_MODEL_CACHE="pvc")

    ws = inference_workspace("serve", namespace, image, "1.0")
    kube_json(kube_client, "POST", f"{API}/namespaces/{namespace}/workspaces", ws)

    ready = wait_status(
        kube_client,
        namespace,
        "serve",
        lambda w: condition(w, "InferenceReady").get("status") == "True",
        240,
        f"InferenceReady (operator log tail: {operator.log()[-2000:]})",
    )
    assert condition(ready, "ResourceReady")["status"] == "True"
    assert condition(ready, "WorkspaceSucceeded")["status"] == "True"
    assert ready["status"]["inference"]["workload"] == "Deployment/serve"
    apps = f"/apis/apps/v1/namespaces/{namespace}/deployments/serve"
    deployment = kube_json(kube_client, "GET", apps)
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "serve"
    service = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/services/serve")
    assert service["spec"]["ports"][0]["port"] == 80
    url = f"http://{service['spec']['clusterIP']}"
    with_adapter = wait_for(lambda: answer(url), 180, "the server to answer /chat")
    assert with_adapter == ANSWER
    assert answer(url, "code-word") == ANSWER
    base = answer(url, "tiny-llama")
    assert base != ANSWER
    (first,) = fetch_model_summaries(kube_client, namespace).values()
    assert first["cached"] is False and first["bytesFetched"] > 0
    model = get_workspace(kube_client, namespace, "serve")["status"]["inference"]["model"]
    assert model == {"source": "oci", "reference": first["reference"], "digest": first["digest"]}
    assert first["reference"] == f"{tiny_model.rsplit(':', 1)[0]}@{first['digest']}"
    first_hash = deployment["spec"]["template"]["metadata"]["annotations"]["kaito.sh/adapters-hash"]

    patch = {"inference": {"adapters": [{**ws["inference"]["adapters"][0], "strength": "0.0"}]}}
    kube_json(
        kube_client,
        "PATCH",
        f"{API}/namespaces/{namespace}/workspaces/serve",
        patch,
        content_type="application/merge-patch+json",
    )

    def rolled() -> bool:
        template = kube_json(kube_client, "GET", apps)["spec"]["template"]
        return template["metadata"]["annotations"]["kaito.sh/adapters-hash"] != first_hash

    wait_for(rolled, 60, "the Deployment's template to change with the strength")
    # strength 0.0: the default model is the base model (once the new pod's server is up)
    wait_for(lambda: answer(url) == base, 240, "the rolled server to answer like the base model")
    final = get_workspace(kube_client, namespace, "serve")
    assert final["status"]["inference"]["adapters"] == {"code-word": "0.0"}
    # the rolled pod found the weights in the namespace's cache: nothing downloaded again
    rolled_pod = [s for s in fetch_model_summaries(kube_client, namespace).values() if s != first]
    assert rolled_pod and rolled_pod[0]["cached"] is True and rolled_pod[0]["bytesFetched"] == 0


def test_model_and_adapter_mounted_as_image_volumes_serve_without_a_copy(
    kube_client, namespace, node, run_operator, code_word_adapter
):
    """Both in KAITO's layout on the node's registry, mounted by the kubelet and containerd as image volumes
    (subPath data): no fetch-model and no pull init container, and the adapter still answers."""
    plain = ClientOptions(plain_http=True)
    mirror = f"{node.image_registry}/kaito-tune/models-kaito"
    model = mirror_reference(get_model(TINY_PRESET_NAME), mirror)
    push_model(str(ensure_tiny_preset()), model, fmt="kaito", options=plain, preset=TINY_PRESET_NAME)
    adapter = f"{node.image_registry}/kaito-tune/adapters/code-word:kaito"
    push(code_word_adapter, adapter, fmt="kaito", options=plain)
    run_operator(
        KAITO_TUNE_MODEL_REGISTRY=mirror,
        KAITO_TUNE_MODEL_IMAGE_VOLUMES="true",
        KAITO_TUNE_INFERENCE_ADAPTER_IMAGE_VOLUMES="true",
    )
    ws = inference_workspace("mounted", namespace, adapter, "1.0")
    del ws["inference"]["adapters"][0]["source"]["imagePullSecrets"]  # the node's registry is open
    kube_json(kube_client, "POST", f"{API}/namespaces/{namespace}/workspaces", ws)
    wait_status(
        kube_client,
        namespace,
        "mounted",
        lambda w: condition(w, "InferenceReady").get("status") == "True",
        240,
        "InferenceReady with image volumes",
    )
    (pod,) = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert "initContainers" not in pod["spec"]
    images = {v["name"]: v["image"]["reference"] for v in pod["spec"]["volumes"] if "image" in v}
    assert images == {"model": model, "adapter-0": adapter}
    service = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/services/mounted")
    url = f"http://{service['spec']['clusterIP']}"
    assert wait_for(lambda: answer(url), 180, "the server to answer /chat") == ANSWER
    assert answer(url, "tiny-llama") != ANSWER


def fetch_model_summaries(kube_client, namespace: str) -> dict[str, dict]:
    """Each server pod's fetch-model result (its termination message), by pod name."""
    found = {}
    for pod in kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/pods")["items"]:
        for status in pod["status"].get("initContainerStatuses") or []:
            terminated = status["state"].get("terminated") or {}
            if status["name"] == "fetch-model" and terminated.get("exitCode") == 0:
                found[pod["metadata"]["name"]] = json.loads(terminated["message"])
    return found


def test_no_matching_node_and_an_unknown_preset_are_reported_on_the_workspace(
    kube_client, namespace, workspace_crd, run_operator
):
    run_operator()
    elsewhere = inference_workspace("elsewhere", namespace, "127.0.0.1:9/a:v1", "1.0")
    elsewhere["resource"]["labelSelector"]["matchLabels"] = {"apps": "no-such-node"}
    unknown = inference_workspace("unknown", namespace, "127.0.0.1:9/a:v1", "1.0")
    unknown["inference"]["preset"]["name"] = "tiny-lama"
    for ws in (elsewhere, unknown):
        kube_json(kube_client, "POST", f"{API}/namespaces/{namespace}/workspaces", ws)

    waiting = wait_status(
        kube_client,
        namespace,
        "elsewhere",
        lambda w: condition(w, "ResourceReady").get("status") == "False",
        60,
        "ResourceReady False for a selector no node matches",
    )
    invalid = wait_status(
        kube_client,
        namespace,
        "unknown",
        lambda w: condition(w, "WorkspaceSucceeded").get("reason") == "InvalidSpec",
        60,
        "the unknown preset to be reported",
    )

    assert "no node matches resource.labelSelector" in condition(waiting, "ResourceReady")["message"]
    assert waiting["status"]["inference"]["phase"] == "WaitingForNodes"
    assert condition(waiting, "InferenceReady")["status"] == "False"
    message = condition(invalid, "InferenceReady")["message"]
    assert "tiny-lama" in message and "tiny-llama" in message  # the bad name and the nearest known one
    assert invalid["status"]["state"] == "Failed"
    deployments = kube_json(kube_client, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
    assert deployments["items"] == []  # neither got a server


def test_every_rendered_variant_is_accepted_by_the_api_server(kube_client, namespace):
    """Server-side dry run of each shape: multi-node, image volumes, volumeSource, vLLM, pull secrets."""
    from contract.workspace import parse_workspace
    from tests.api.builders import ADAPTERS_SEED, edit, load
    from tuning_controller.render.inference import render_inference_objects
    from tuning_controller.settings import Settings

    seed = edit(load(ADAPTERS_SEED), "metadata.namespace", namespace)
    seed = edit(seed, "inference.adapters[0].source.imagePullSecrets", ["registry-login"])
    on_disk = {"source": {"name": "on-disk", "volumeSource": {"persistentVolumeClaim": {"claimName": "a"}}}}
    seed = edit(seed, "inference.adapters", [*seed["inference"]["adapters"], on_disk])
    variants = {
        "single node": (seed, Settings()),
        "multi-node": (edit(seed, "resource.count", 2), Settings()),
        "image volumes": (seed, Settings(inference_adapter_image_volumes=True)),
        "vllm": (edit(seed, "resource.count", 2), Settings(inference_runtime="vllm")),
    }
    for what, (obj, settings) in variants.items():
        ws, problems = parse_workspace(obj)
        assert not problems, what
        for rendered in render_inference_objects(ws, settings, gpus=2):
            plural = {"Service": "services", "Deployment": "deployments", "StatefulSet": "statefulsets"}
            base = "/api/v1" if rendered["apiVersion"] == "v1" else "/apis/apps/v1"
            path = (
                f"{base}/namespaces/{namespace}/{plural[rendered['kind']]}?dryRun=All&fieldValidation=Strict"
            )
            accepted = kube_json(kube_client, "POST", path, rendered)
            assert accepted["spec"]["selector"], (what, rendered["kind"])


class PausingKube(Kube):
    """Holds the first NodeClaim apply until ``go`` is set: a reconcile caught between its read of the
    NodeClaim and its write."""

    def __init__(self, api):
        super().__init__(api)
        self.at_apply, self.go = threading.Event(), threading.Event()

    def apply(self, obj, **kwargs):
        if obj["kind"] == "NodeClaim" and not self.at_apply.is_set():
            self.at_apply.set()
            self.go.wait(30)
        return super().apply(obj, **kwargs)


def test_an_inference_workspace_deleted_mid_reconcile_leaves_no_nodeclaim(
    kube_client, namespace, control_plane, workspace_crd, nodeclaim_crd, monkeypatch
):
    """Issue 15 item 8: the delete handler releases the NodeClaim after the reconcile in flight (which
    applies it), and a reconcile that read the Workspace before the deletion writes nothing after it.
    The handlers run in this process against the real API server, so the race is forced, not hoped for."""
    ws = inference_workspace("brief", namespace, "127.0.0.1:9/a:v1", "1.0")
    ws["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    body = kube_json(kube_client, "POST", f"{API}/namespaces/{namespace}/workspaces", ws)
    kube = PausingKube(Kube.from_environment(str(control_plane.kubeconfig)).api)
    settings = Settings(auto_provisioning=True, model_registry="registry.example/kaito-models")
    ctl = runtime.Controller(kube, settings, lambda *a: None)
    monkeypatch.setattr(runtime, "_controller", ctl)  # what the delete handler's controller() returns

    plans: list = []
    reconcile = threading.Thread(target=lambda: plans.append(inference_handlers.reconcile(ctl, body)))
    reconcile.start()
    assert kube.at_apply.wait(30), "the reconcile never came to apply the NodeClaim"
    delete = threading.Thread(target=inference_handlers.inference_workspace_delete, args=(body,))
    delete.start()
    time.sleep(0.5)  # an unguarded delete handler finds no NodeClaim now, and is done
    kube.go.set()
    reconcile.join(60)
    delete.join(60)
    assert plans and plans[0].phase == "WaitingForNodes"  # it did apply the NodeClaim...
    assert nodeclaims_of(kube_client, nodeclaim_crd, namespace, "brief") == []  # ...and it was released

    # A reconcile that read the Workspace before the deletion and comes only now writes nothing.
    assert inference_handlers.reconcile(ctl, body) is None
    assert nodeclaims_of(kube_client, nodeclaim_crd, namespace, "brief") == []


def test_a_smaller_count_and_the_delete_release_every_nodeclaim_beyond_it(
    kube_client, namespace, control_plane, workspace_crd, nodeclaim_crd, monkeypatch
):
    """Each pod of a multi-node server has its NodeClaim; a count made smaller no longer names the last
    ones, so they are found by label and released (a GPU node each), and the delete handler releases
    whatever the Workspace still holds. A claim labelled for the Workspace but owned by another uid (a
    deleted namesake's) is left alone. The handlers run in this process against the real API server."""
    ws = inference_workspace("shrinks", namespace, "127.0.0.1:9/a:v1", "1.0")
    ws["resource"].update(instanceType="Standard_NC24ads_A100_v4", count=3)
    body = kube_json(kube_client, "POST", f"{API}/namespaces/{namespace}/workspaces", ws)
    kube = Kube.from_environment(str(control_plane.kubeconfig))
    settings = Settings(auto_provisioning=True, model_registry="registry.example/kaito-models")
    ctl = runtime.Controller(kube, settings, lambda *a: None)
    monkeypatch.setattr(runtime, "_controller", ctl)  # what the delete handler's controller() returns

    def claims() -> list[str]:
        return sorted(
            c["metadata"]["name"] for c in nodeclaims_of(kube_client, nodeclaim_crd, namespace, "shrinks")
        )

    inference_handlers.reconcile(ctl, body, prune=True)
    three = claims()
    assert len(three) == 3, three
    foreign = json.loads(json.dumps(kube.get("karpenter.sh/v1", "NodeClaim", None, three[0])))
    foreign["metadata"] = {
        "name": f"{three[0]}-9",
        "labels": foreign["metadata"]["labels"],
        "annotations": {"kaito.sh/workspace-uid": "someone-else"},
    }
    kube.create(foreign)

    path = f"{API}/namespaces/{namespace}/workspaces/shrinks"
    smaller = kube_json(
        kube_client, "PATCH", path, {"resource": {"count": 1}}, content_type="application/merge-patch+json"
    )
    plan = inference_handlers.reconcile(ctl, smaller, prune=True)
    assert claims() == sorted([three[0], f"{three[0]}-9"])  # index 0 kept, 1 and 2 released
    released = [
        w.obj["metadata"]["name"] for w in plan.writes if w.verb == "delete" and w.obj["kind"] == "NodeClaim"
    ]
    assert released == three[1:], released

    inference_handlers.inference_workspace_delete(smaller)
    assert claims() == [f"{three[0]}-9"]  # the namesake's claim is not ours to release
