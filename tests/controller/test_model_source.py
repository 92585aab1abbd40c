"""Where the base model's weights come from: the rules (validation) and the fetch-model step (renderers)."""

from __future__ import annotations

import pytest

from contract.problems import errors
from tests.controller.test_render import SHA, containers, parsed, rev, workspace
from tuning_controller.render.inference import render_pod_template
from tuning_controller.render.job import render_data_job, render_training_job
from tuning_controller.render.model import render_model_cache_claim
from tuning_controller.settings import Settings, SettingsError, settings_from_env
from tuning_controller.validation import validate_workspace

MIRROR = "mirror.example.com/kaito-models"
PHI3 = "microsoft/Phi-3-mini-4k-instruct@0a67737cc96d2554230f90338b163bc6380a2a85"


def with_preset(name: str, **options) -> dict:
    preset = {"name": name, **({"presetOptions": options} if options else {})}
    return workspace(preset=preset)


def problems(obj: dict, registry: str = "") -> dict[str, str]:
    return {p.path: str(p) for p in errors(validate_workspace(obj, model_registry=registry))}


def mounts_of(container: dict) -> set[str]:
    return {m["name"] for m in container["volumeMounts"]}


def test_hub_weights_at_the_pinned_revision_with_the_token_only_in_fetch_model():
    ws = parsed(with_preset("phi-3-mini-4k-instruct", modelAccessSecret="hf"))
    settings = Settings(hub_endpoint="http://hub.internal:8090")
    job = render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1, model_reference=PHI3)
    fetch = containers(job)["fetch-model"]
    assert fetch["command"][:6] == [
        "kaito-tune",
        "fetch-model",
        "--dest",
        "/mnt/model/weights",
        "--hub",
        PHI3,
    ]
    assert fetch["command"][6:8] == ["--hub-endpoint", "http://hub.internal:8090"]
    assert "--token-file" in fetch["command"] and "--config-only" not in fetch["command"]
    users = [n for n, c in containers(job).items() if "model-secret" in mounts_of(c)]
    assert users == ["fetch-model"]
    spec = job["spec"]["template"]["spec"]
    secret = next(v for v in spec["volumes"] if v["name"] == "model-secret")
    assert secret["secret"] == {"secretName": "hf", "items": [{"key": "HF_TOKEN", "path": "token"}]}
    train = containers(job)["train"]
    assert train["command"][train["command"].index("--weights") + 1] == "/mnt/model/weights"
    readers = {m["name"]: m.get("readOnly") for m in train["volumeMounts"]}
    assert readers["model"] is True and readers["model-cache"] is True


def test_the_mirror_is_used_and_the_training_fetches_what_the_preflight_pinned():
    ws = parsed(workspace())
    settings = Settings(model_registry=MIRROR, insecure_registries=("mirror.example.com",))
    data = render_data_job(ws, settings, rev(ws))
    fetch = containers(data)["fetch-model"]
    tag = f"{MIRROR}/phi-3-mini-4k-instruct:0a67737cc96d2554230f90338b163bc6380a2a85"
    assert fetch["command"][4:6] == ["--image", tag]
    assert "--config-only" in fetch["command"] and "--plain-http" in fetch["command"]
    assert "model-cache" not in mounts_of(fetch)  # the pre-flight never writes the shared cache
    pinned = f"{MIRROR}/phi-3-mini-4k-instruct@sha256:{'b' * 64}"
    job = render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1, model_reference=pinned)
    fetch = containers(job)["fetch-model"]
    assert fetch["command"][4:6] == ["--image", pinned]
    assert fetch["command"][fetch["command"].index("--cache") + 1] == "/mnt/model-cache"


def test_preset_options_image_wins_with_its_pull_secret_only_in_fetch_model():
    image = "private.example.com/models/phi3:v1"
    ws = parsed(with_preset("phi-3-mini-4k-instruct", image=image, imagePullSecrets=["acr"]))
    job = render_training_job(ws, Settings(model_registry=MIRROR), rev(ws), data_sha256=SHA, gpus=1)
    fetch = containers(job)["fetch-model"]
    assert fetch["command"][4:6] == ["--image", image]
    assert "--docker-config" in fetch["command"]
    assert [n for n, c in containers(job).items() if "model-secret" in mounts_of(c)] == ["fetch-model"]


def test_a_pvc_cache_is_the_namespace_claim():
    settings = Settings(model_cache="pvc", model_cache_access_mode="ReadWriteMany", model_cache_size="1Ti")
    ws = parsed(workspace())
    job = render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1, model_reference=PHI3)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "kaito-tune-model-cache"}
    claim = render_model_cache_claim("team", settings)
    assert claim["metadata"]["namespace"] == "team" and "ownerReferences" not in claim["metadata"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Ti"


def test_inference_gets_the_same_fetch_model_step():
    obj = {
        **workspace(),
        "tuning": None,
        "inference": {
            "preset": {"name": "phi-3-mini-4k-instruct", "presetOptions": {"modelAccessSecret": "hf"}}
        },
    }
    del obj["tuning"]
    ws = parsed(obj)
    spec = render_pod_template(ws, Settings(), gpus=1)["spec"]
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "fetch-model" and fetch["command"][4:6] == ["--hub", PHI3]
    (server,) = spec["containers"]
    assert "--weights" in server["command"] and "model-secret" not in mounts_of(server)
    assert "env" not in server or not any(e["name"] == "HF_TOKEN" for e in server["env"])


def test_gated_hub_models_need_a_token_and_packaged_weights_refuse_one():
    gated = problems(with_preset("llama-3.1-8b-instruct"))
    assert "tuning.preset.presetOptions.modelAccessSecret" in gated
    assert "gated" in gated["tuning.preset.presetOptions.modelAccessSecret"]
    assert not problems(with_preset("llama-3.1-8b-instruct", modelAccessSecret="hf"))
    assert not problems(with_preset("phi-3-mini-4k-instruct"))  # public: a token is optional
    refused = problems(with_preset("phi-3-mini-4k-instruct", modelAccessSecret="hf"), registry=MIRROR)
    assert "is not used" in refused["tuning.preset.presetOptions.modelAccessSecret"]
    refused = problems(
        with_preset("phi-3-mini-4k-instruct", image="r.example.com/m:v1", modelAccessSecret="hf")
    )
    assert "r.example.com/m:v1" in refused["tuning.preset.presetOptions.modelAccessSecret"]
    assert "presetOptions.image" in str(problems(with_preset("phi-3-mini-4k-instruct", image="no-registry")))


def test_the_tiny_preset_needs_a_mirror_or_an_image():
    found = problems(with_preset("tiny-llama"))
    assert "model push" in found["tuning.preset.name"]
    assert not problems(with_preset("tiny-llama"), registry=MIRROR)
    assert not problems(with_preset("tiny-llama", image="r.example.com/models/tiny:v1"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAITO_TUNE_MODEL_CACHE": "hostPath"}, "MODEL_CACHE='hostPath': must be one of pvc, emptyDir"),
        ({"KAITO_TUNE_MODEL_REGISTRY": "https://r.example.com/m"}, "MODEL_REGISTRY="),
        ({"KAITO_TUNE_MODEL_REGISTRY": "r.example.com/m:v1"}, "without scheme, tag or digest"),
        ({"KAITO_TUNE_MODEL_CACHE_ACCESS_MODE": "ReadOnlyMany"}, "ReadWriteOnce, ReadWriteMany"),
    ],
)
def test_bad_model_settings_are_refused_at_start(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        settings_from_env(env)


def test_model_image_volumes_mount_the_pinned_artifact_without_a_copy():
    settings = Settings(model_registry=MIRROR, model_image_volumes=True, push_format="kaito")
    ws = parsed(with_preset("phi-3-mini-4k-instruct", image="r.example.com/m:v1", imagePullSecrets=["acr"]))
    pinned = f"r.example.com/m@sha256:{'c' * 64}"
    job = render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1, model_reference=pinned)
    spec = job["spec"]["template"]["spec"]
    assert "fetch-model" not in containers(job)
    volume = next(v for v in spec["volumes"] if v["name"] == "model")
    assert volume["image"] == {"reference": pinned, "pullPolicy": "IfNotPresent"}
    (weights,) = [m for m in containers(job)["train"]["volumeMounts"] if m["name"] == "model"]
    assert weights == {
        "name": "model",
        "mountPath": "/mnt/model/weights",
        "readOnly": True,
        "subPath": "data",
    }
    assert spec["imagePullSecrets"] == [{"name": "acr"}]
    push = containers(job)["push"]["command"]
    assert push[push.index("--format") + 1] == "kaito"  # what an image volume can mount
    # the pre-flight still fetches the configs: it pins the digest and proves the credentials
    assert "fetch-model" in containers(render_data_job(ws, settings, rev(ws)))
    # a hub source cannot be an image volume: fetch-model as before
    hub = parsed(workspace())
    job = render_training_job(hub, Settings(model_image_volumes=True), rev(hub), data_sha256=SHA, gpus=1)
    assert "fetch-model" in containers(job)
