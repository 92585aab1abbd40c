"""Multi-node tuning on the real node (issue 16): resource.count 2 trains as an Indexed Job of two pods,
two processes each (gloo on the CPU), which find each other through the headless Service's DNS names and
torchrun's c10d rendezvous; the push Job pushes the one adapter. Its held-out loss is the one a single
pod of four processes reaches on the same data and seed, and a pod lost mid-training restarts the group,
which resumes from the last checkpoint.

The node is one machine: it is told it has 4 GPUs for these tests (an extended resource, as in
hack/node.sh), so each pod of two gets 2 and each process one "GPU"; the results claim is ReadWriteMany
on hack/addons.yaml's local-path-shared class."""

from __future__ import annotations

import yaml

from hack.cluster import pod_log
from tests.controller.conftest import (
    apply,
    condition,
    dump,
    jobs,
    tuning_workspace,
    wait_status,
)
from tests.controller.test_end_to_end import watch_until_done
from tests.fixtures.cluster import kube_json

STEPS = 24


def create_config(api, namespace: str, name: str, save_steps: int = 0) -> str:
    """The same training on every side: seed, data order, steps and a held-out quarter of the rows."""
    args = {
        "output_dir": "/mnt/results",
        "per_device_train_batch_size": 1,
        "max_steps": STEPS,
        "logging_steps": 1,
        "learning_rate": 0.001,
        "seed": 7,
        "save_strategy": "steps" if save_steps else "no",
    }
    if save_steps:
        args["save_steps"] = save_steps
    config = {
        "training_config": {
            "ModelConfig": {"torch_dtype": "bfloat16", "local_files_only": True},
            "QuantizationConfig": {"load_in_4bit": False},
            "LoraConfig": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
            "TrainingArguments": args,
            "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 0.75},
        }
    }
    body = {"metadata": {"name": name}, "data": {"training_config.yaml": yaml.safe_dump(config)}}
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
    return name


def workspace(namespace: str, name: str, url: str, config: str, count: int, image: str) -> dict:
    ws = tuning_workspace(
        name,
        namespace,
        urls=[url],
        output={"image": image, "imagePushSecret": "push-secret"},
        config=config,
    )
    ws["resource"]["count"] = count
    return ws


def pods_of(api, namespace: str, job: str) -> list[dict]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=job-name%3D{job}"
    return kube_json(api, "GET", path)["items"]


def index_of(pod: dict) -> str:
    return pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", "")


def succeeded(api, namespace: str, name: str, timeout: float) -> dict:
    final, _ = watch_until_done(api, namespace, name, timeout=timeout)
    assert condition(final, "WorkspaceSucceeded")["status"] == "True", dump(api, namespace, name)
    return final


def test_two_pods_of_two_processes_learn_what_one_pod_of_four_learns(
    kube_client, namespace, node_registry, multi_node_setup
):
    config = create_config(kube_client, namespace, "same-training")
    apply(
        kube_client,
        workspace(namespace, "multi", multi_node_setup, config, 2, node_registry.ref("adapters/multi", "v1")),
    )
    multi = succeeded(kube_client, namespace, "multi", timeout=600)
    apply(
        kube_client,
        workspace(
            namespace, "single", multi_node_setup, config, 1, node_registry.ref("adapters/single", "v1")
        ),
    )
    single = succeeded(kube_client, namespace, "single", timeout=600)

    created = {j["metadata"]["name"]: j for j in jobs(kube_client, namespace)}
    assert {"multi-data", "multi", "multi-push", "single-data", "single"} == set(created)
    training = created["multi"]
    assert training["spec"]["completionMode"] == "Indexed" and training["status"]["succeeded"] == 2
    pods = pods_of(kube_client, namespace, "multi")
    assert sorted(index_of(p) for p in pods) == ["0", "1"]
    for pod in pods:  # two processes in each pod, four in the group
        train = next(c for c in pod["spec"]["containers"] if c["name"] == "train")
        assert "--nnodes=2" in train["command"] and "--nproc-per-node=2" in train["command"]
        assert all(v["name"] != "push-secret" for v in pod["spec"]["volumes"])
    push_pod = pods_of(kube_client, namespace, "multi-push")[0]
    assert any(v["name"] == "push-secret" for v in push_pod["spec"]["volumes"])
    claim = kube_json(
        kube_client, "GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/multi-results"
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    adapter = multi["status"]["tuning"]["adapter"]
    assert adapter["digest"].startswith("sha256:") and adapter["image"].endswith("adapters/multi:v1")
    ours, theirs = (ws["status"]["tuning"]["progress"] for ws in (multi, single))
    assert ours["step"] == theirs["step"] == STEPS
    print(f"\nheld-out loss: 2 pods x 2 processes {ours['evalLoss']:.5f}, 1 pod x 4 {theirs['evalLoss']:.5f}")
    assert abs(ours["evalLoss"] - theirs["evalLoss"]) <= 0.02 * theirs["evalLoss"]


def test_a_lost_pod_restarts_the_group_which_resumes_from_the_last_checkpoint(
    kube_client, namespace, node_registry, multi_node_setup
):
    config = create_config(kube_client, namespace, "checkpointed", save_steps=4)
    apply(
        kube_client,
        workspace(
            namespace, "resume", multi_node_setup, config, 2, node_registry.ref("adapters/resume", "v1")
        ),
    )
    wait_status(
        kube_client,
        namespace,
        "resume",
        lambda w: (((w.get("status") or {}).get("tuning") or {}).get("progress") or {}).get("step", 0) >= 6,
        600,
        "training past its first checkpoint",
    )
    (lost,) = [p for p in pods_of(kube_client, namespace, "resume") if index_of(p) == "1"]
    kube_json(kube_client, "DELETE", f"/api/v1/namespaces/{namespace}/pods/{lost['metadata']['name']}")
    final = succeeded(kube_client, namespace, "resume", timeout=600)

    assert final["status"]["tuning"]["progress"]["step"] == STEPS
    job = kube_json(kube_client, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/resume")
    pods = pods_of(kube_client, namespace, "resume")
    done = {index_of(p): p for p in pods if p["status"]["phase"] == "Succeeded"}
    failed = sorted(index_of(p) for p in pods if p["status"]["phase"] == "Failed")
    # the whole group restarted: pod 0 failed with its peer, the deleted pod 1 is gone
    assert job["status"]["succeeded"] == 2 and sorted(done) == ["0", "1"] and failed == ["0"], failed
    assert done["1"]["metadata"]["uid"] != lost["metadata"]["uid"]
    log = pod_log(kube_client, namespace, done["0"]["metadata"]["name"], "train")
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    assert resumed, log[-3000:]
    step = int(resumed[-1].rsplit("checkpoint-", 1)[1].split()[0])
    assert 4 <= step < STEPS, resumed
    print(f"\nresumed from step {step}; Job failed count {job['status'].get('failed')}")
    assert final["status"]["tuning"]["adapter"]["digest"].startswith("sha256:")
