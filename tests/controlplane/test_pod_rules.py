"""The kubelet and scheduler rules the pod executor follows (hack/pod_runtime.py), on plain dicts."""

from __future__ import annotations

import pytest

from tests.fixtures.cluster import hack_module

rt = hack_module("pod_runtime")


def pod(**spec) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "tune"}},
        "spec": {"containers": [{"name": "main", "image": "x"}], **spec},
    }


def node(labels=None, taints=None, gpus="1") -> dict:
    return {
        "metadata": {"name": "n", "labels": labels or {}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": gpus}},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-$(B)"),  # unknown names stay verbatim
        ("$$(A)", "$(A)"),  # $$ escapes
        ("cost $5 $(A", "cost $5 $(A"),  # no closing paren: literal
        ("$(A)$(A)$", "11$"),
    ],
)
def test_expand_follows_kubernetes_rules(text, expected):
    assert rt.expand(text, {"A": "1"}) == expected


def test_env_sees_only_names_defined_before():
    container = {
        "name": "main",
        "env": [
            {"name": "LATE", "value": "$(EARLY)-$(LATER)"},
            {"name": "EARLY", "value": "e"},
            {"name": "LATER", "value": "$(EARLY)x"},
        ],
    }
    env = rt.container_env(pod(), container, {}, lambda *_: None, {})
    assert env == {"LATE": "$(EARLY)-$(LATER)", "EARLY": "e", "LATER": "ex"}


def test_missing_config_map_key_is_a_config_error_unless_optional():
    data = {"present": "1"}
    ref = {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "absent"}}}
    with pytest.raises(rt.ConfigError, match="configmap ns/cm has no key 'absent'"):
        rt.container_env(pod(), {"name": "main", "env": [ref]}, {}, lambda *_: data, {})
    ref["valueFrom"]["configMapKeyRef"]["optional"] = True
    assert "X" not in rt.container_env(pod(), {"name": "main", "env": [ref]}, {}, lambda *_: data, {})


def test_gpu_requests_are_counted_against_allocatable():
    wants_gpu = pod(containers=[{"name": "m", "resources": {"limits": {"nvidia.com/gpu": "1"}}}])
    assert rt.unschedulable_reason(wants_gpu, node(), []) is None
    running = {**wants_gpu, "status": {"phase": "Running"}}
    assert rt.unschedulable_reason(wants_gpu, node(), [running]) == "Insufficient nvidia.com/gpu"
    finished = {**wants_gpu, "status": {"phase": "Succeeded"}}
    assert rt.unschedulable_reason(wants_gpu, node(), [finished]) is None


def test_init_containers_count_by_their_largest_request():
    p = pod(
        initContainers=[{"name": "i", "resources": {"requests": {"cpu": "6"}}}],
        containers=[{"name": "a", "resources": {"requests": {"cpu": "1"}}}, {"name": "b"}],
    )
    assert rt.pod_requests(p)["cpu"] == 6


def test_node_selector_affinity_and_taints():
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "apps", "operator": "In", "values": ["phi-3"]}]}
                ]
            }
        }
    }
    gpu_taint = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
    assert rt.unschedulable_reason(pod(affinity=affinity), node({"apps": "phi-3"}), []) is None
    assert "affinity/selector" in rt.unschedulable_reason(pod(affinity=affinity), node({"apps": "x"}), [])
    assert "affinity/selector" in rt.unschedulable_reason(pod(nodeSelector={"a": "b"}), node(), [])
    assert "untolerated taint {sku: gpu}" in rt.unschedulable_reason(pod(), node(taints=[gpu_taint]), [])
    tolerated = pod(tolerations=[{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}])
    assert rt.unschedulable_reason(tolerated, node(taints=[gpu_taint]), []) is None


def test_termination_message_falls_back_to_the_log_tail_only_on_error():
    log = "\n".join(f"line {i}" for i in range(200))
    assert rt.termination_message("written", log, "FallbackToLogsOnError", 1) == "written"
    assert rt.termination_message("", log, "File", 1) == ""
    assert rt.termination_message("", log, "FallbackToLogsOnError", 0) == ""
    tail = rt.termination_message("", log, "FallbackToLogsOnError", 1)
    assert tail.splitlines() == [f"line {i}" for i in range(120, 200)]


def test_probe_port_by_number_or_name():
    c = {"name": "web", "ports": [{"name": "http", "containerPort": 5000}]}
    assert rt.probe_port(c, 8080) == 8080
    assert rt.probe_port(c, "http") == 5000
    with pytest.raises(rt.ConfigError, match="'grpc' is not a named port of container 'web'"):
        rt.probe_port(c, "grpc")
