"""Which GPU nodes a tuning Job runs on: pure decisions over Node and NodeClaim objects.

Own nodes (no auto-provisioning): the Ready, schedulable Nodes matching the Workspace's labelSelector,
with their GPU count from ``allocatable["nvidia.com/gpu"]`` and memory per GPU from GPU feature
discovery's ``nvidia.com/gpu.memory`` label (MiB), else the ``nvidia.com/gpu.product`` label looked up
in the GPU catalog. A node must hold the training's memory estimate on each GPU (every GPU holds a
replica). When none fits, the message lists what exists, so a person sees why.

Auto-provisioning: the NodeClaim's ``Ready`` condition decides; its GPU count is the SKU's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract.workspace import LabelSelector
from presets.catalog import skus
from tuning_controller.plan import Event, Verb, Write, named
from tuning_controller.render.nodeclaim import NODECLAIM_API_VERSION
from tuning_controller.render.pod import GPU_RESOURCE

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class NodeChoice:
    """The chosen node (empty when none fits), its GPUs, and a message for the condition."""

    node: str
    gpus: int
    message: str

    @property
    def ok(self) -> bool:
        return bool(self.node)


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics (an empty selector matches everything)."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def _catalog_memory(product: str) -> float | None:
    """GiB per GPU for a GFD product label such as NVIDIA-A100-SXM4-80GB, via the catalog's GPU models."""
    tokens = set(product.upper().replace("_", "-").split("-"))
    models = {sku.gpu_model: sku.gpu_memory_gib for sku in skus()}
    for model in sorted(models, key=len, reverse=True):
        if set(model.upper().split("-")) <= tokens:
            return models[model]
    return None


def gpu_memory_gib(node: Mapping[str, Any]) -> float | None:
    labels = node.get("metadata", {}).get("labels") or {}
    raw = labels.get(GPU_MEMORY_LABEL)
    if raw and str(raw).isdigit():
        return int(raw) / 1024
    product = labels.get(GPU_PRODUCT_LABEL)
    return _catalog_memory(product) if product else None


def gpu_count(node: Mapping[str, Any]) -> int:
    raw = (node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        return int(raw)
    except ValueError:
        return 0


def is_ready(node: Mapping[str, Any]) -> bool:
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _describe(node: Mapping[str, Any]) -> str:
    memory = gpu_memory_gib(node)
    shown = f"{memory:g} GiB" if memory is not None else "unknown memory"
    state = "" if is_ready(node) else ", not ready"
    return f"{node['metadata']['name']} ({gpu_count(node)} GPU, {shown}{state})"


def gpus_per_pod(fitting: list[Mapping[str, Any]], pods: int) -> int:
    """The most GPUs each of ``pods`` pods can have on the ``fitting`` nodes (a node of g GPUs holds
    g // per-pod of them); 0 when they hold fewer than ``pods`` pods of one GPU."""
    counts = [gpu_count(n) for n in fitting]
    fits = [g for g in range(1, max(counts, default=0) + 1) if sum(c // g for c in counts) >= pods]
    return max(fits, default=0)


def choose_node(
    nodes: list[Mapping[str, Any]], selector: LabelSelector | None, need_gib: float | None, pods: int = 1
) -> NodeChoice:
    """The own nodes for a training Job of ``pods`` pods (resource.count): matching, ready, with GPUs that
    hold ``need_gib`` each, and as many GPUs per pod as they allow (every pod the same).

    Unknown GPU memory is accepted (the estimate cannot be checked; the trainer's own checks remain).
    One pod: the node with the most GPUs wins (name breaks ties, so the choice is stable) and the pod
    takes all of them. Several: the scheduler places them; a node of 8 GPUs holds two pods of 4 when
    that is what the count needs, one of 8 when there are enough such nodes.
    """
    matching = [n for n in nodes if selector_matches(selector, n.get("metadata", {}).get("labels") or {})]
    fitting = []
    for node in matching:
        memory = gpu_memory_gib(node)
        if (
            is_ready(node)
            and gpu_count(node) > 0
            and (need_gib is None or memory is None or memory >= need_gib)
        ):
            fitting.append(node)
    ordered = sorted(fitting, key=lambda n: (-gpu_count(n), n["metadata"]["name"]))
    per_pod = gpus_per_pod(ordered, pods)
    if per_pod:
        used = [n for n in ordered if gpu_count(n) >= per_pod]
        if pods == 1:
            return NodeChoice(used[0]["metadata"]["name"], per_pod, f"using node {_describe(used[0])}")
        shown = "; ".join(_describe(n) for n in used[:10])
        return NodeChoice(
            used[0]["metadata"]["name"], per_pod, f"{pods} pods of {per_pod} GPU on the nodes {shown}"
        )
    need = f" with {need_gib:.1f} GiB per GPU" if need_gib is not None else ""
    if not matching:
        gpu_nodes = [n for n in nodes if gpu_count(n) > 0]
        listed = "; ".join(
            f"{_describe(n)} labels {dict(n['metadata'].get('labels') or {})}" for n in gpu_nodes[:5]
        )
        return NodeChoice(
            "",
            0,
            f"no node matches resource.labelSelector; GPU nodes: {listed or 'none'}. Label a GPU node "
            "to match, or set resource.instanceType with auto-provisioning on",
        )
    listed = "; ".join(_describe(n) for n in matching[:10])
    if fitting:  # some fit, too few for the count
        return NodeChoice(
            "",
            0,
            f"resource.count {pods} needs {pods} pods of at least 1 GPU{need}; the ready matching nodes "
            f"hold {sum(gpu_count(n) for n in fitting)} GPUs: {listed}. Label more GPU nodes, or lower "
            "resource.count",
        )
    return NodeChoice(
        "",
        0,
        f"no matching node is ready with GPUs{need}; matching nodes: {listed}. Add a larger GPU node, or "
        "lower the memory need (qlora, smaller micro-batch, gradient checkpointing)",
    )


def nodeclaim_state(nodeclaim: Mapping[str, Any] | None) -> tuple[bool, str]:
    """(ready, message) from a NodeClaim's status conditions."""
    if nodeclaim is None:
        return False, "NodeClaim not created yet"
    conditions = {c.get("type"): c for c in nodeclaim.get("status", {}).get("conditions") or []}
    ready = conditions.get("Ready")
    if ready and ready.get("status") == "True":
        node = nodeclaim.get("status", {}).get("nodeName", "")
        return True, f"NodeClaim {nodeclaim['metadata']['name']} is ready" + (
            f" (node {node})" if node else ""
        )
    waiting = [
        f"{t}: {c.get('message') or c.get('reason') or c.get('status')}"
        for t, c in conditions.items()
        if c.get("status") != "True"
    ]
    detail = "; ".join(waiting) if waiting else "no status yet"
    return False, f"waiting for NodeClaim {nodeclaim['metadata']['name']} ({detail})"


def nodeclaims_state(claims: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """(all ready, message) of a Workspace's NodeClaims, one per node of resource.count: one's own
    message, or how many of N are ready and what the first one not ready waits for."""
    states = [nodeclaim_state(claim) for claim in claims]
    waiting = [message for ready, message in states if not ready]
    if len(states) == 1:
        return states[0]
    if waiting:
        return False, f"{len(states) - len(waiting)} of {len(states)} NodeClaims ready; {waiting[0]}"
    return True, f"all {len(states)} NodeClaims are ready"


def release_nodeclaims(names: Iterable[str], reason: str | None) -> tuple[Write, ...]:
    """Deletes of these NodeClaims, each with a NodeClaimReleased Event giving ``reason`` (None: no Event,
    for a Workspace being deleted)."""
    return tuple(
        Write(
            Verb.DELETE,
            named(NODECLAIM_API_VERSION, "NodeClaim", name),
            Event("Normal", "NodeClaimReleased", f"deleted NodeClaim {name}: {reason}") if reason else None,
        )
        for name in names
    )
