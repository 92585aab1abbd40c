"""Pure renderers: the objects a tuning Workspace becomes, checked field by field."""

from __future__ import annotations

import pytest

from contract.pod import urls_sha256
from contract.workspace import parse_workspace
from tuning_controller.render import render_workspace_objects
from tuning_controller.render.configmap import choose_training_config
from tuning_controller.render.job import (
    render_data_job,
    render_training_job,
    revision,
)
from tuning_controller.render.nodeclaim import render_nodeclaim
from tuning_controller.render.rbac import render_progress_rbac
from tuning_controller.settings import Settings, SettingsError, settings_from_env

SHA = "a" * 64


def workspace(**tuning_overrides) -> dict:
    tuning = {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {"urls": ["https://data.example.com/train.parquet"]},
        "output": {"image": "registry.example.com/adapters/a:v1", "imagePushSecret": "push"},
    }
    tuning.update(tuning_overrides)
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "ws", "namespace": "team", "uid": "u-1", "labels": {}},
        "resource": {
            "instanceType": "Standard_NC48ads_A100_v4",
            "labelSelector": {
                "matchLabels": {"apps": "tuning"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
            },
        },
        "tuning": tuning,
    }


def parsed(obj: dict):
    ws, problems = parse_workspace(obj)
    assert not problems
    return ws


def containers(job: dict) -> dict[str, dict]:
    spec = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def template(ws) -> dict:
    """The training config a Workspace without tuning.config trains with: its method's template."""
    chosen = choose_training_config(ws.require_tuning(), None)
    assert chosen is not None and not chosen.from_user
    return dict(chosen.doc)


def rev(ws) -> str:
    return revision(ws, template(ws))


def test_training_job_pipeline_and_push_secret_only_in_push():
    ws = parsed(workspace())
    job = render_training_job(ws, Settings(), rev(ws), data_sha256=SHA, gpus=2)
    assert job["spec"]["activeDeadlineSeconds"] == 7 * 24 * 3600  # a hung run does not hold GPUs for ever
    spec = job["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-data", "fetch-model", "train"]
    assert [c["name"] for c in spec["containers"]] == ["push"]
    with_secret = [
        n for n, c in containers(job).items() if any(m["name"] == "push-secret" for m in c["volumeMounts"])
    ]
    assert with_secret == ["push"]
    token_users = [
        n for n, c in containers(job).items() if any(m["name"] == "progress-token" for m in c["volumeMounts"])
    ]
    assert token_users == ["train"] and spec["automountServiceAccountToken"] is False
    train = containers(job)["train"]
    assert train["command"][:8] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "trainer.qlora",
        "train",
        "--expect-data-sha256",
        SHA,
    ]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in spec["volumes"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "apps", "operator": "In", "values": ["tuning"]},
                {"key": "zone", "operator": "In", "values": ["a", "b"]},
            ]
        }
    ]
    assert {"name": "results", "persistentVolumeClaim": {"claimName": "ws-results"}} in spec["volumes"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    meta = job["metadata"]
    assert meta["name"] == "ws" and meta["labels"]["kaito.sh/workspace"] == "ws"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "kaito"
    assert meta["ownerReferences"][0]["uid"] == "u-1" and meta["ownerReferences"][0]["controller"] is True
    assert meta["annotations"]["kaito.sh/revision"] == rev(ws)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "suspend" not in job["spec"]


def test_single_gpu_runs_python_directly():
    ws = parsed(workspace())
    train = containers(render_training_job(ws, Settings(), rev(ws), data_sha256=SHA, gpus=1))["train"]
    assert train["command"][:4] == ["python", "-m", "trainer.qlora", "train"]


def test_volume_output_trains_into_the_volume_without_push():
    ws = parsed(workspace(output={"volumeSource": {"persistentVolumeClaim": {"claimName": "out"}}}))
    job = render_training_job(ws, Settings(), rev(ws), data_sha256=SHA, gpus=1)
    spec = job["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["train"]
    assert "push" not in containers(job)
    assert {"name": "results", "persistentVolumeClaim": {"claimName": "out"}} in spec["volumes"]
    assert not any(v["name"] == "push-secret" for v in spec["volumes"])
    kinds = [o["kind"] for o in render_workspace_objects(ws, Settings())]
    assert "PersistentVolumeClaim" not in kinds  # the user's volume holds the results


def test_volume_input_is_mounted_without_fetch():
    ws = parsed(workspace(input={"volumeSource": {"persistentVolumeClaim": {"claimName": "in"}}}))
    data = render_data_job(ws, Settings(), rev(ws))
    assert [c["name"] for c in data["spec"]["template"]["spec"]["initContainers"]] == ["fetch-model"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "in"}} in data["spec"]["template"]["spec"][
        "volumes"
    ]


def test_data_job_is_cpu_only_and_fails_at_once_on_bad_data():
    ws = parsed(workspace())
    job = render_data_job(ws, Settings(allowed_url_networks=("127.0.0.0/8",)), rev(ws))
    spec = job["spec"]["template"]["spec"]
    assert job["metadata"]["name"] == "ws-data"
    assert all("nvidia.com/gpu" not in str(c.get("resources")) for c in containers(job).values())
    assert spec["automountServiceAccountToken"] is False and "tolerations" not in spec
    assert "--allow-network 127.0.0.0/8" in " ".join(containers(job)["fetch-data"]["command"])
    # no torch: the node does not pull the GPU runtime image to check the data
    assert {c["image"] for c in containers(job).values()} == {
        Settings().tools_image,
        Settings().preflight_image,
    }
    preflight = containers(job)["preflight"]["command"]
    assert preflight[:6] == [
        "python",
        "-m",
        "trainer.qlora",
        "preflight",
        "--summary-file",
        "/dev/termination-log",
    ]
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {
        "containerName": "preflight",
        "operator": "In",
        "values": [1],
    }
    without = render_data_job(ws, Settings(), rev(ws))
    assert "--allow-network" not in containers(without)["fetch-data"]["command"]


def test_revision_changes_with_config_input_and_method_only():
    ws = parsed(workspace())
    base = revision(ws, template(ws))
    tweaked = template(ws)
    tweaked["training_config"]["LoraConfig"]["r"] = 16
    assert revision(ws, tweaked) != base
    other_input = parsed(workspace(input={"urls": ["https://data.example.com/other.parquet"]}))
    assert revision(other_input, template(other_input)) != base
    lora = parsed(workspace(method="lora"))
    assert revision(lora, template(lora)) != base
    relabelled = workspace()
    relabelled["metadata"]["labels"] = {"team": "x"}
    assert revision(parsed(relabelled), template(ws)) == base


def test_kueue_queue_label_suspends_both_jobs():
    obj = workspace()
    obj["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu-queue"}
    ws = parsed(obj)
    for job in (
        render_data_job(ws, Settings(), rev(ws)),
        render_training_job(ws, Settings(), rev(ws), data_sha256=SHA, gpus=1),
    ):
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_progress_rbac_is_limited_to_own_status():
    ws = parsed(workspace())
    sa, role, binding = render_progress_rbac(ws)
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "ws-tuning"
    assert role["rules"] == [
        {
            "apiGroups": ["kaito.sh"],
            "resources": ["workspaces/status"],
            "resourceNames": ["ws"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ws-tuning", "namespace": "team"}]


def test_nodeclaim_for_the_sku_with_labels_and_gpu_taint():
    ws = parsed(workspace())
    claim = render_nodeclaim(ws, Settings(auto_provisioning=True))
    assert claim["apiVersion"] == "karpenter.sh/v1" and "namespace" not in claim["metadata"]
    assert claim["metadata"]["name"].startswith("ws-") and len(claim["metadata"]["name"]) == len("ws-") + 8
    assert claim["metadata"]["labels"]["apps"] == "tuning"
    assert {
        "key": "node.kubernetes.io/instance-type",
        "operator": "In",
        "values": ["Standard_NC48ads_A100_v4"],
    } in claim["spec"]["requirements"]
    assert claim["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    objects = render_workspace_objects(ws, Settings(auto_provisioning=True))
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "ConfigMap",
        "Secret",  # the input URLs (tests/controller/test_input_urls.py)
        "Job",
        "NodeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Job",
    ]
    train = containers(objects[-1])["train"]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "2"  # every GPU of the SKU


def test_nodeclaim_keeps_the_controllers_labels_and_passes_the_node_image_family_on():
    obj = workspace()
    obj["resource"]["labelSelector"]["matchLabels"]["kaito.sh/workspace"] = "someone-else"
    obj["metadata"]["annotations"] = {"kaito.sh/node-image-family": "AzureLinux"}
    claim = render_nodeclaim(parsed(obj), Settings(auto_provisioning=True))
    assert claim["metadata"]["labels"]["kaito.sh/workspace"] == "ws"  # validation refuses the key too
    assert claim["metadata"]["annotations"] == {
        "kaito.sh/workspace-uid": "u-1",
        "kaito.sh/node-image-family": "azurelinux",
    }


def test_long_names_stay_within_63_characters():
    obj = workspace()
    obj["metadata"]["name"] = "w" * 60
    ws = parsed(obj)
    job = render_data_job(ws, Settings(), rev(ws))
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].endswith("-data")


def test_settings_from_env_name_the_variable():
    s = settings_from_env({"KAITO_TUNE_AUTO_PROVISIONING": "true", "KAITO_TUNE_BACKOFF_LIMIT": "4"})
    assert s.auto_provisioning is True and s.backoff_limit == 4
    for env, needle in (
        ({"KAITO_TUNE_RESULTS_VOLUME": "disk"}, "KAITO_TUNE_RESULTS_VOLUME='disk'"),
        ({"KAITO_TUNE_AUTO_PROVISIONING": "maybe"}, "true or false"),
        ({"KAITO_TUNE_PROGRESS_INTERVAL_SECONDS": "60"}, "1..30"),
    ):
        try:
            settings_from_env(env)
        except SettingsError as exc:
            assert needle in str(exc)
        else:
            raise AssertionError(f"{env} accepted")


def test_results_on_the_claim_are_kept_per_revision():
    ws = parsed(workspace())
    tweaked = template(ws)
    tweaked["training_config"]["LoraConfig"]["r"] = 32
    paths = set()
    for rev_ in (rev(ws), revision(ws, tweaked)):
        job = render_training_job(ws, Settings(), rev_, data_sha256=SHA, gpus=1)
        mounts = {
            n: m for n, c in containers(job).items() for m in c["volumeMounts"] if m["name"] == "results"
        }
        assert mounts["train"]["subPath"] == mounts["push"]["subPath"] == f"revision-{rev_}"
        paths.add(mounts["train"]["subPath"])
    assert len(paths) == 2  # a changed config never finds the old adapter complete
    emptydir = render_training_job(ws, Settings(results_volume="emptyDir"), rev(ws), data_sha256=SHA, gpus=1)
    assert "subPath" not in str(containers(emptydir)["train"]["volumeMounts"])


def test_allowed_url_networks_and_insecure_registries_from_env():
    s = settings_from_env(
        {
            "KAITO_TUNE_ALLOWED_URL_NETWORKS": "127.0.0.0/8, 10.250.0.1,,fd00::/8",
            "KAITO_TUNE_INSECURE_REGISTRIES": "10.250.0.1:5000,Registry.Local,[fd00::1]:5000",
        }
    )
    assert s.allowed_url_networks == ("127.0.0.0/8", "10.250.0.1/32", "fd00::/8")
    assert s.insecure_registries == ("10.250.0.1:5000", "registry.local", "[fd00::1]:5000")
    empty = settings_from_env({"KAITO_TUNE_ALLOWED_URL_NETWORKS": "", "KAITO_TUNE_INSECURE_REGISTRIES": ""})
    assert (empty.allowed_url_networks, empty.insecure_registries) == ((), ())
    assert (Settings().allowed_url_networks, Settings().insecure_registries) == ((), ())


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KAITO_TUNE_ALLOWED_URL_NETWORKS": "10.250.0.0/33"}, "'10.250.0.0/33' is not an IP network"),
        ({"KAITO_TUNE_ALLOWED_URL_NETWORKS": "127.0.0.0/8,localhost"}, "'localhost' is not an IP network"),
        ({"KAITO_TUNE_ALLOWED_URL_NETWORKS": "true"}, "must be comma-separated CIDRs or addresses"),
        ({"KAITO_TUNE_INSECURE_REGISTRIES": "http://10.250.0.1:5000"}, "'http://10.250.0.1:5000' is not"),
        ({"KAITO_TUNE_INSECURE_REGISTRIES": "10.250.0.1:5000/v2"}, "no scheme, no path"),
        ({"KAITO_TUNE_INSECURE_REGISTRIES": "registry.local:99999"}, "host or host:port"),
        ({"KAITO_TUNE_INSECURE_REGISTRIES": "registry.local:"}, "host or host:port"),
        ({"KAITO_TUNE_TRAIN_CPU_REQUEST": "two"}, "must be a Kubernetes quantity"),
        ({"KAITO_TUNE_TRAIN_MEMORY_REQUEST": "8GB"}, "must be a Kubernetes quantity"),
        ({"KAITO_TUNE_TRAIN_MEMORY_LIMIT": "4Gi"}, "must be at least KAITO_TUNE_TRAIN_MEMORY_REQUEST (8Gi)"),
    ],
)
def test_bad_network_and_registry_lists_name_the_variable_and_value(env, needle):
    ((name, value),) = env.items()
    with pytest.raises(SettingsError) as error:
        settings_from_env(env)
    assert f"{name}={value!r}" in str(error.value) and needle in str(error.value)


def test_fetch_data_gets_one_allow_network_per_allowed_network():
    ws = parsed(workspace(input={"urls": ["http://10.250.0.1:8000/train.parquet"]}))
    settings = Settings(allowed_url_networks=("10.250.0.1", "127.0.0.0/8"))
    for job in (
        render_data_job(ws, settings, rev(ws)),
        render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1),
    ):
        command = containers(job)["fetch-data"]["command"]
        pairs = [command[i : i + 2] for i, arg in enumerate(command) if arg == "--allow-network"]
        assert pairs == [["--allow-network", "10.250.0.1/32"], ["--allow-network", "127.0.0.0/8"]]


DATA_IMAGE = "10.250.0.1:5000/data/train:v1"
ADAPTER_IMAGE = "10.250.0.1:5000/adapters/a:v1"


@pytest.mark.parametrize(
    ("insecure", "input_image", "output_image", "plain_fetch", "plain_push"),
    [
        ((), DATA_IMAGE, ADAPTER_IMAGE, False, False),
        (("10.250.0.1:5000",), DATA_IMAGE, ADAPTER_IMAGE, True, True),
        (("10.250.0.1",), DATA_IMAGE, ADAPTER_IMAGE, False, False),  # the port is part of the match
        (("10.250.0.1:5001",), DATA_IMAGE, ADAPTER_IMAGE, False, False),
        (("10.250.0.1",), "10.250.0.1/data/train:v1", ADAPTER_IMAGE, True, False),
        (("registry.example.com",), DATA_IMAGE, "registry.example.com/adapters/a:v1", False, True),
        (("REGISTRY.example.com",), DATA_IMAGE, "Registry.Example.com/adapters/a:v1", False, True),
        (("10.250.0.1:5000", "registry.example.com"), "data.example.com/d:v1", ADAPTER_IMAGE, False, True),
    ],
)
def test_plain_http_exactly_for_insecure_registries(
    insecure, input_image, output_image, plain_fetch, plain_push
):
    ws = parsed(
        workspace(
            input={"image": input_image},
            output={"image": output_image, "imagePushSecret": "push"},
        )
    )
    settings = Settings(insecure_registries=insecure)
    data = containers(render_data_job(ws, settings, rev(ws)))
    training = containers(render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1))
    assert ("--plain-http" in data["fetch-data"]["command"]) is plain_fetch
    assert ("--plain-http" in training["fetch-data"]["command"]) is plain_fetch
    assert ("--plain-http" in training["push"]["command"]) is plain_push
    assert "--plain-http" not in training["train"]["command"]


def test_url_input_never_gets_plain_http():
    ws = parsed(workspace(input={"urls": ["http://10.250.0.1:5000/train.parquet"]}))
    settings = Settings(insecure_registries=("10.250.0.1:5000",), allowed_url_networks=("10.250.0.1",))
    assert "--plain-http" not in containers(render_data_job(ws, settings, rev(ws)))["fetch-data"]["command"]


def _pod_volumes(obj: dict) -> list[dict]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template") or {}
    return (template.get("spec") or {}).get("volumes") or []


@pytest.mark.parametrize(
    "settings",
    [
        Settings(
            results_volume="emptyDir", model_cache="emptyDir", results_size="7Gi", model_cache_size="9Gi"
        ),
        Settings(inference_runtime="vllm", model_cache="emptyDir", model_cache_size="9Gi"),
    ],
    ids=["emptyDir-results-and-cache", "vllm"],
)
def test_every_scratch_volume_has_a_size_limit(settings):
    """A pod that writes more than its emptyDir allows is evicted, instead of filling the node's disk;
    only /dev/shm (memory, counted against the container) goes without."""
    from tests.api.builders import ADAPTERS_SEED, load

    tuning = parsed(workspace(input={"image": "registry.example.com/data/set:v1"}))
    serving = parsed(load(ADAPTERS_SEED))
    objects = render_workspace_objects(tuning, settings) + render_workspace_objects(serving, settings)
    scratch = {
        (o["kind"], v["name"]): v["emptyDir"] for o in objects for v in _pod_volumes(o) if "emptyDir" in v
    }
    assert {name for _, name in scratch} >= {"data", "model", "model-cache", "dshm"}
    for (kind, name), empty_dir in scratch.items():
        if name == "dshm":
            assert empty_dir == {"medium": "Memory"}
        else:
            assert empty_dir.get("sizeLimit"), (kind, name)
    sizes = {name: d.get("sizeLimit") for (_, name), d in scratch.items()}
    assert sizes["model"] == sizes["model-cache"] == "9Gi" and sizes["data"] == "40Gi"
    if settings.results_volume == "emptyDir":
        assert sizes["results"] == "7Gi"
    else:
        assert sizes["merged"] == "9Gi"


def test_the_train_container_asks_for_cpu_and_memory_and_gets_a_memory_limit_only_when_set():
    ws = parsed(workspace())
    job = render_training_job(ws, Settings(), rev(ws), data_sha256=SHA, gpus=2)
    assert containers(job)["train"]["resources"] == {
        "requests": {"nvidia.com/gpu": "2", "cpu": "2", "memory": "8Gi"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    env = {"KAITO_TUNE_TRAIN_CPU_REQUEST": "500m", "KAITO_TUNE_TRAIN_MEMORY_LIMIT": "9G"}
    settings = settings_from_env(env)
    job = render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1)
    assert containers(job)["train"]["resources"] == {
        "requests": {"nvidia.com/gpu": "1", "cpu": "500m", "memory": "8Gi"},
        "limits": {"nvidia.com/gpu": "1", "memory": "9G"},
    }


def test_input_urls_reach_fetch_data_through_the_revisions_secret_not_the_argv():
    """A signed URL's query is a credential: no container of either Job carries it; both mount the
    revision's Secret, and fetch-data checks it against the list's digest."""
    signed = "https://data.example/train.parquet?sig=SIGNEDTOKEN"
    ws = parsed(workspace(input={"urls": [signed]}))
    objects = render_workspace_objects(ws, Settings())
    secret = next(o for o in objects if o["kind"] == "Secret")
    assert secret["immutable"] and secret["stringData"] == {"urls": f"{signed}\n"}
    assert secret["metadata"]["name"] == f"ws-input-{rev(ws)[:8]}"
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert len(jobs) == 2 and "SIGNEDTOKEN" not in str(jobs)
    for job in jobs:
        fetch = containers(job)["fetch-data"]
        argv = fetch["command"]
        assert argv[argv.index("--urls-file") + 1] == "/mnt/input-urls/urls"
        assert argv[argv.index("--expect-urls-sha256") + 1] == urls_sha256([signed])
        mount = {"name": "input-urls", "mountPath": "/mnt/input-urls", "readOnly": True}
        assert mount in fetch["volumeMounts"]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["input-urls"]["secret"]["secretName"] == secret["metadata"]["name"]
    image_input = parsed(workspace(input={"image": "registry.example/data:v1"}))
    assert all(o["kind"] != "Secret" for o in render_workspace_objects(image_input, Settings()))


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_mlflow_tracking_reaches_the_train_container_and_no_other():
    obj = workspace()
    obj["metadata"]["annotations"] = {"kaito.sh/mlflow-experiment": "team-a-chat"}
    ws, plain = parsed(obj), parsed(workspace())
    settings = Settings(
        mlflow_tracking_uri="http://mlflow.mlflow:5000", mlflow_credentials_secret="mlflow-auth"
    )
    job = render_training_job(ws, settings, rev(ws), data_sha256=SHA, gpus=1)
    env = _env(containers(job)["train"])
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow:5000"
    assert env["MLFLOW_EXPERIMENT_NAME"]["value"] == "team-a-chat"  # the annotation's, over the setting's
    assert env["KAITO_ADAPTER_IMAGE"]["value"] == "registry.example.com/adapters/a:v1"  # a tag of the run
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert env[key]["valueFrom"] == {
            "secretKeyRef": {"name": "mlflow-auth", "key": key, "optional": True}
        }
    assert "value" not in env["MLFLOW_TRACKING_TOKEN"]
    default = render_training_job(plain, settings, rev(plain), data_sha256=SHA, gpus=1)
    assert _env(containers(default)["train"])["MLFLOW_EXPERIMENT_NAME"]["value"] == "kaito-tune"
    others = [c for name, c in containers(job).items() if name != "train"]
    others += containers(render_data_job(ws, settings, rev(ws))).values()
    assert others and not any("MLFLOW" in str(c) or "mlflow-auth" in str(c) for c in others)
    untracked = render_training_job(ws, Settings(), rev(ws), data_sha256=SHA, gpus=1)
    assert "MLFLOW" not in str(untracked)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KAITO_TUNE_MLFLOW_TRACKING_URI": "mlflow:5000"}, "the http(s) URL of an MLflow tracking server"),
        ({"KAITO_TUNE_MLFLOW_TRACKING_URI": "file:///tmp/runs"}, "the http(s) URL"),
        ({"KAITO_TUNE_MLFLOW_TRACKING_URI": "https://bot:pw@mlflow"}, "no user or password; name a Secret"),
        ({"KAITO_TUNE_MLFLOW_EXPERIMENT": ""}, "must be 1..500 characters"),
        ({"KAITO_TUNE_MLFLOW_CREDENTIALS_SECRET": "MLflow_Auth"}, "must be empty or a Secret's name"),
    ],
)
def test_bad_mlflow_settings_name_the_variable(env, needle):
    with pytest.raises(SettingsError, match=next(iter(env))) as error:
        settings_from_env(env)
    assert needle in str(error.value) and "pw" not in str(error.value)
    assert settings_from_env({"KAITO_TUNE_MLFLOW_TRACKING_URI": "https://mlflow.example/base"})
