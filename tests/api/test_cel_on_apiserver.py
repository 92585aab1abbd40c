"""Every CEL rule of the CRD fires on a real kube-apiserver with its own message, and every example applies.

Creates use server-side dry run (validation runs, nothing is stored); update rules create the object
first and then try the forbidden change. The local control plane comes from tests/fixtures/cluster.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from contract.workspace import MAX_ADAPTERS
from tests.api.builders import EXAMPLES, edit
from tests.fixtures.cluster import KubeError, kube_json
from tuning_controller.crd import RULES

TUNING: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "Workspace",
    "metadata": {"name": "tune"},
    "resource": {
        "instanceType": "Standard_NC24ads_A100_v4",
        "labelSelector": {"matchLabels": {"apps": "phi-3"}},
    },
    "tuning": {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {"urls": ["https://example.com/data/train.parquet"]},
        "output": {"image": "myacr.azurecr.io/adapters/phi-3:0.0.1", "imagePushSecret": "acr-push"},
    },
}
ADAPTER = {"source": {"name": "a", "image": "myacr.azurecr.io/adapters/a:1"}, "strength": "0.5"}
# As many adapters as the schema allows, image and volume sources alternating, names unique.
LARGEST_ADAPTERS = [
    {
        "source": {"name": f"a{i}", "image": f"myacr.azurecr.io/adapters/a{i}:1"}
        if i % 2 == 0
        else {"name": f"a{i}", "volumeSource": {"persistentVolumeClaim": {"claimName": f"a{i}"}}},
        "strength": "0.5",
    }
    for i in range(MAX_ADAPTERS)
]
INFERENCE: dict[str, Any] = {
    **{k: v for k, v in TUNING.items() if k != "tuning"},
    "metadata": {"name": "serve"},
    "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, "adapters": [ADAPTER]},
}


def message(location: str, fragment: str) -> str:
    (rule,) = [r for r in RULES[location] if fragment in r["rule"]]
    return rule["message"]


def url(namespace: str, name: str = "", api_version: str = "kaito.sh/v1beta1") -> str:
    return f"/apis/{api_version}/namespaces/{namespace}/workspaces" + (f"/{name}" if name else "")


def refused(call: Callable[[], Any]) -> str:
    with pytest.raises(KubeError) as info:
        call()
    assert info.value.status == 422, info.value
    return str(info.value.body["message"])


CREATE_CASES = [
    ("neither", edit(TUNING, "tuning", delete=True), "", "!= has(self.tuning)"),
    ("both", edit(TUNING, "inference", INFERENCE["inference"]), "", "!= has(self.tuning)"),
    ("template-and-preset", edit(INFERENCE, "inference.template", {"spec": {}}), "inference", "template"),
    (
        "adapter-names",
        edit(INFERENCE, "inference.adapters", [ADAPTER, ADAPTER]),
        "inference.adapters",
        "lastIndexOf",
    ),
    (
        "adapter-names-last-of-many",
        edit(INFERENCE, "inference.adapters", [*LARGEST_ADAPTERS[:-1], LARGEST_ADAPTERS[0]]),
        "inference.adapters",
        "lastIndexOf",
    ),
    (
        "adapter-no-name",
        edit(INFERENCE, "inference.adapters[0].source.name", delete=True),
        "inference.adapters[]",
        "source.name != ''",
    ),
    (
        "adapter-two-sources",
        edit(INFERENCE, "inference.adapters[0].source.volumeSource", {"emptyDir": {}}),
        "inference.adapters[]",
        "volumeSource",
    ),
    (
        "adapter-strength",
        edit(INFERENCE, "inference.adapters[0].strength", "1.5"),
        "inference.adapters[]",
        "double",
    ),
    ("method", edit(TUNING, "tuning.method", "dora"), "tuning", "in ['lora', 'qlora']"),
    (
        "input-two-sources",
        edit(TUNING, "tuning.input.image", "myacr.azurecr.io/data:1"),
        "tuning.input",
        "has(self.urls) ?",
    ),
    (
        "input-image-and-volume",
        edit(TUNING, "tuning.input", {"image": "myacr.azurecr.io/data:1", "volumeSource": {"emptyDir": {}}}),
        "tuning.input",
        "has(self.urls) ?",
    ),
    (
        "input-all-three",
        edit(
            TUNING,
            "tuning.input",
            {
                "urls": ["https://example.com/a"],
                "image": "myacr.azurecr.io/d:1",
                "volumeSource": {"emptyDir": {}},
            },
        ),
        "tuning.input",
        "has(self.urls) ?",
    ),
    ("input-none", edit(TUNING, "tuning.input", {"name": "data"}), "tuning.input", "has(self.urls) ?"),
    (
        "output-two-targets",
        edit(TUNING, "tuning.output.volumeSource", {"emptyDir": {}}),
        "tuning.output",
        "has(self.image) != has(self.volumeSource)",
    ),
    (
        "push-secret",
        edit(TUNING, "tuning.output.imagePushSecret", delete=True),
        "tuning.output",
        "imagePushSecret",
    ),
    (
        "input-hostpath",
        edit(TUNING, "tuning.input", {"volumeSource": {"hostPath": {"path": "/var/lib/kubelet"}}}),
        "tuning.input.volumeSource",
        "self.all(k",
    ),
    (
        "output-hostpath",
        edit(TUNING, "tuning.output", {"volumeSource": {"hostPath": {"path": "/etc/cron.d"}}}),
        "tuning.output.volumeSource",
        "self.all(k",
    ),
    (
        "adapter-secret-volume",
        edit(
            INFERENCE,
            "inference.adapters[0].source",
            {"name": "a", "volumeSource": {"secret": {"secretName": "s"}}},
        ),
        "inference.adapters[].source.volumeSource",
        "self.all(k",
    ),
    (
        "push-secret-v1alpha1",
        edit(edit(TUNING, "tuning.output.imagePushSecret", delete=True), "apiVersion", "kaito.sh/v1alpha1"),
        "tuning.output",
        "imagePushSecret",
    ),
]


@pytest.mark.parametrize(
    ("body", "location", "fragment"), [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES]
)
def test_server_refuses_a_bad_workspace_with_the_rule_message(
    workspace_crd: dict, kube_client: Any, namespace: str, body: dict, location: str, fragment: str
) -> None:
    target = url(namespace, api_version=body["apiVersion"]) + "?dryRun=All"
    said = refused(lambda: kube_json(kube_client, "POST", target, body))
    assert message(location, fragment) in said


UPDATE_CASES = [
    (
        "switch",
        TUNING,
        lambda o: edit(edit(o, "tuning", delete=True), "inference", INFERENCE["inference"]),
        "",
        "has(oldSelf.tuning)",
    ),
    (
        "instance-type",
        TUNING,
        lambda o: edit(o, "resource.instanceType", "Standard_NC40ads_H100_v5"),
        "resource",
        "oldSelf.instanceType",
    ),
    ("tuning-preset", TUNING, lambda o: edit(o, "tuning.preset.name", "phi-4"), "tuning", "oldSelf.preset"),
    ("tuning-method", TUNING, lambda o: edit(o, "tuning.method", "lora"), "tuning", "oldSelf.method"),
    (
        "tuning-input",
        TUNING,
        lambda o: edit(o, "tuning.input.urls", ["https://example.com/other.parquet"]),
        "tuning",
        "oldSelf.input",
    ),
    (
        "tuning-output",
        TUNING,
        lambda o: edit(o, "tuning.output.image", "myacr.azurecr.io/other:1"),
        "tuning",
        "oldSelf.output",
    ),
    (
        "inference-preset",
        INFERENCE,
        lambda o: edit(o, "inference.preset.name", "phi-4"),
        "inference",
        "oldSelf.preset",
    ),
]


@pytest.mark.parametrize(
    ("base", "change", "location", "fragment"),
    [c[1:] for c in UPDATE_CASES],
    ids=[c[0] for c in UPDATE_CASES],
)
def test_server_refuses_forbidden_updates_with_the_rule_message(
    workspace_crd: dict,
    kube_client: Any,
    namespace: str,
    base: dict,
    change: Callable,
    location: str,
    fragment: str,
) -> None:
    created = kube_json(kube_client, "POST", url(namespace), copy.deepcopy(base))
    changed = change(created)
    said = refused(
        lambda: kube_json(kube_client, "PUT", url(namespace, created["metadata"]["name"]), changed)
    )
    assert message(location, fragment) in said


def test_the_most_adapters_with_unique_names_are_accepted(
    workspace_crd: dict, kube_client: Any, namespace: str
) -> None:
    body = edit(INFERENCE, "inference.adapters", LARGEST_ADAPTERS)
    kube_json(kube_client, "POST", url(namespace) + "?dryRun=All", body)


def test_allowed_update_passes(workspace_crd: dict, kube_client: Any, namespace: str) -> None:
    created = kube_json(kube_client, "POST", url(namespace), copy.deepcopy(INFERENCE))
    stronger = edit(created, "inference.adapters[0].strength", "1.0")
    kube_json(kube_client, "PUT", url(namespace, created["metadata"]["name"]), stronger)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_accepted_as_written(
    workspace_crd: dict, kube_client: Any, namespace: str, path
) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Workspace":
            version = doc["apiVersion"].split("/")[1]
            target = f"/apis/kaito.sh/{version}/namespaces/{namespace}/workspaces?dryRun=All"
            kube_json(kube_client, "POST", target, doc)
