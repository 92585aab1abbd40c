"""Rendering inference Workspaces: Deployment/StatefulSet, Services, adapter pulls, vLLM (pure)."""

from __future__ import annotations

import pytest

from contract.workspace import parse_workspace
from tests.api.builders import ADAPTERS_SEED, edit, load
from tuning_controller.render import sku_gpus
from tuning_controller.render.inference import (
    ADAPTERS_HASH_ANNOTATION,
    render_inference_objects,
    stale_objects,
)
from tuning_controller.settings import Settings, settings_from_env

IMAGE = "ACR_REPO_HERE.azurecr.io/ADAPTER_HERE:0.0.1"


def render(obj: dict, **settings) -> list[dict]:
    ws, problems = parse_workspace(obj)
    assert not problems
    return render_inference_objects(ws, Settings(**settings), gpus=sku_gpus(ws))


def with_adapter(obj: dict, adapter: dict) -> dict:
    return edit(obj, "inference.adapters", [*obj["inference"]["adapters"], adapter])


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def pod(objects: list[dict]) -> dict:
    (workload,) = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    return workload["spec"]["template"]


def test_seed_with_adapters_becomes_service_and_deployment_with_a_pull_per_adapter():
    objects = render(load(ADAPTERS_SEED))

    kinds = by_kind(objects)
    assert sorted(kinds) == [
        "Deployment/workspace-phi-3-mini-adapter",
        "Service/workspace-phi-3-mini-adapter",
    ]
    service = kinds["Service/workspace-phi-3-mini-adapter"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    spec = pod(objects)["spec"]
    fetch, pull = spec["initContainers"]
    assert fetch["name"] == "fetch-model" and fetch["image"] == Settings().tools_image
    assert pull["name"] == "pull-phi-3-adapter"
    assert pull["command"][:4] == ["kaito-tune", "pull", IMAGE, "/mnt/adapter/phi-3-adapter"]
    (server,) = spec["containers"]
    assert server["command"][:7] == [
        "python",
        "-m",
        "inference",
        "--preset",
        "phi-3-mini-128k-instruct",
        "--weights",
        "/mnt/model/weights",
    ]
    assert {"name": "KAITO_ADAPTER_STRENGTHS", "value": "phi-3-adapter=1.0"} in server["env"]
    assert server["ports"] == [{"name": "http", "containerPort": 5000}]
    assert server["image"] == Settings().trainer_image  # it holds inference/; fetch-model brings the weights
    assert pull["image"] == Settings().tools_image  # no torch next to the pull secret
    assert server["resources"]["limits"] == {"nvidia.com/gpu": "1"}  # Standard_NC6s_v3: one V100
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": 5000}
    # one volume for all pulled adapters: the pull renames its staging dir into place within it
    assert pull["volumeMounts"][0] == {"name": "adapters", "mountPath": "/mnt/adapter"}
    assert server["volumeMounts"][0] == {"name": "adapters", "mountPath": "/mnt/adapter", "readOnly": True}
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "apps", "operator": "In", "values": ["phi-3-adapter"]}
    ]
    assert service["spec"]["selector"].items() <= pod(objects)["metadata"]["labels"].items()


def test_gpus_come_from_the_sku():
    objects = render(edit(load(ADAPTERS_SEED), "resource.instanceType", "Standard_NC24ads_A100_v4"))
    assert pod(objects)["spec"]["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "1"}
    objects = render(edit(load(ADAPTERS_SEED), "resource.instanceType", "Standard_NC48ads_A100_v4"))
    assert pod(objects)["spec"]["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "2"}


def test_changing_adapters_rolls_the_pods_and_nothing_else_does():
    seed = load(ADAPTERS_SEED)
    rolled = {
        "strength": edit(seed, "inference.adapters[0].strength", "0.5"),
        "image": edit(seed, "inference.adapters[0].source.image", "r.io/a:0.0.2"),
        "added": with_adapter(seed, {"source": {"name": "second", "image": "r.io/b:1"}, "strength": "0.2"}),
    }
    same = edit(seed, "metadata.labels", {"team": "x"})

    def annotation(obj):
        return pod(render(obj))["metadata"]["annotations"][ADAPTERS_HASH_ANNOTATION]

    before = annotation(seed)
    assert annotation(same) == before
    for what, obj in rolled.items():
        assert annotation(obj) != before, what
    strengths = {e["name"]: e["value"] for e in pod(render(rolled["added"]))["spec"]["containers"][0]["env"]}
    assert strengths["KAITO_ADAPTER_STRENGTHS"] == "phi-3-adapter=1.0,second=0.2"


def test_pull_secret_reaches_only_the_pull_container():
    objects = render(
        edit(load(ADAPTERS_SEED), "inference.adapters[0].source.imagePullSecrets", ["acr", "other"])
    )

    spec = pod(objects)["spec"]
    _, pull = spec["initContainers"]
    assert pull["command"][-2:] == ["--docker-config", "/mnt/pull-secrets/0/.dockerconfigjson"]
    secret = next(v for v in spec["volumes"] if v["name"] == "adapter-0-pull-secret")
    assert secret["secret"]["secretName"] == "acr"
    assert all("pull-secret" not in m["name"] for m in spec["containers"][0]["volumeMounts"])
    assert "imagePullSecrets" not in spec


def test_image_volumes_and_volume_sources_need_no_pull():
    seed = edit(load(ADAPTERS_SEED), "inference.adapters[0].source.imagePullSecrets", ["acr"])
    seed = with_adapter(
        seed,
        {"source": {"name": "on-disk", "volumeSource": {"persistentVolumeClaim": {"claimName": "adapters"}}}},
    )

    spec = pod(render(seed, inference_adapter_image_volumes=True))["spec"]

    assert [c["name"] for c in spec["initContainers"]] == ["fetch-model"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "adapters" not in volumes
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/adapter/phi-3-adapter"] == "adapter-0"
    assert mounts["/mnt/adapter/on-disk"] == "adapter-1"
    assert volumes["adapter-0"]["image"] == {"reference": IMAGE, "pullPolicy": "IfNotPresent"}
    assert volumes["adapter-1"]["persistentVolumeClaim"] == {"claimName": "adapters"}
    assert spec["imagePullSecrets"] == [{"name": "acr"}]


def test_multi_node_is_a_statefulset_with_a_headless_rendezvous_service():
    objects = render(edit(load(ADAPTERS_SEED), "resource.count", 2))

    kinds = by_kind(objects)
    workload = kinds["StatefulSet/workspace-phi-3-mini-adapter"]
    assert workload["spec"]["replicas"] == 2
    assert workload["spec"]["serviceName"] == "workspace-phi-3-mini-adapter-headless"
    headless = kinds["Service/workspace-phi-3-mini-adapter-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["ports"][0]["port"] == 29500
    assert (
        kinds["Service/workspace-phi-3-mini-adapter"]["spec"]["selector"]["apps.kubernetes.io/pod-index"]
        == "0"
    )
    env = {e["name"]: e for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"].startswith(
        "workspace-phi-3-mini-adapter-0.workspace-phi-3-mini-adapter-headless."
    )
    assert env["NNODES"]["value"] == "2"


def test_vllm_serves_merged_adapters_by_name():
    half = edit(load(ADAPTERS_SEED), "inference.adapters[0].strength", "0.5")
    objects = render(half, inference_runtime="vllm")

    spec = pod(objects)["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [
        "fetch-model",
        "pull-phi-3-adapter",
        "merge-adapters",
    ]
    merge = spec["initContainers"][2]
    assert merge["command"][:3] == ["python", "-m", "inference.merge"]
    assert merge["env"] == [{"name": "KAITO_ADAPTER_STRENGTHS", "value": "phi-3-adapter=0.5"}]
    script = spec["containers"][0]["command"][-1]
    assert "--enable-lora --lora-modules phi-3-adapter=/mnt/merged/phi-3-adapter" in script
    assert " phi-3-mini-128k-instruct+adapters=/mnt/merged/phi-3-mini-128k-instruct+adapters " in script
    assert '--max-lora-rank "$(cat /mnt/merged/max-lora-rank)"' in script
    assert "--model /mnt/model/weights " in script  # what fetch-model filled, never the hub
    for container in [*spec["initContainers"], *spec["containers"]]:  # vLLM's image runs as root
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    mounts = [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]]
    assert mounts == ["/mnt/merged", "/mnt/model", "/mnt/model-cache", "/dev/shm"]


def test_settings_from_env_say_what_is_wrong():
    settings = settings_from_env(
        {"KAITO_TUNE_INFERENCE_RUNTIME": "vllm", "KAITO_TUNE_INFERENCE_ADAPTER_IMAGE_VOLUMES": "true"}
    )
    assert (settings.inference_runtime, settings.inference_adapter_image_volumes) == ("vllm", True)
    with pytest.raises(ValueError, match="RUNTIME='tgi': must be one of transformers, vllm"):
        settings_from_env({"KAITO_TUNE_INFERENCE_RUNTIME": "tgi"})
    with pytest.raises(ValueError, match="PORT='http': must be an integer"):
        settings_from_env({"KAITO_TUNE_INFERENCE_PORT": "http"})


def test_a_changed_node_count_names_what_the_other_shape_left_behind():
    single, _ = parse_workspace(load(ADAPTERS_SEED))
    multi, _ = parse_workspace(edit(load(ADAPTERS_SEED), "resource.count", 3))

    assert stale_objects(multi) == [("apps/v1", "Deployment", "workspace-phi-3-mini-adapter")]
    assert stale_objects(single) == [
        ("apps/v1", "StatefulSet", "workspace-phi-3-mini-adapter"),
        ("v1", "Service", "workspace-phi-3-mini-adapter-headless"),
    ]


@pytest.mark.parametrize(
    ("insecure", "plain"),
    [
        ((), set()),
        (("10.250.0.1:5000",), {"pull-local"}),
        (("10.250.0.1",), set()),  # exact host:port: the port is part of the match
        (("10.250.0.1:5000", "r.io"), {"pull-local", "pull-second"}),
    ],
)
def test_adapter_pulls_use_plain_http_exactly_for_insecure_registries(insecure, plain):
    seed = with_adapter(
        load(ADAPTERS_SEED),
        {"source": {"name": "local", "image": "10.250.0.1:5000/adapters/local:v1"}, "strength": "0.5"},
    )
    seed = with_adapter(seed, {"source": {"name": "second", "image": "r.io/b:1"}, "strength": "0.2"})
    for runtime in ("transformers", "vllm"):
        pulls = {
            c["name"]: c["command"]
            for c in pod(render(seed, insecure_registries=insecure, inference_runtime=runtime))["spec"][
                "initContainers"
            ]
            if c["name"].startswith("pull-")
        }
        assert sorted(pulls) == ["pull-local", "pull-phi-3-adapter", "pull-second"]
        assert {name for name, command in pulls.items() if "--plain-http" in command} == plain
