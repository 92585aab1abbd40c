"""Pure rules the pod executor follows, as a kubelet and the scheduler would: no API calls, no processes.

Kept apart from hack/pod_executor.py so the rules (what an env var resolves to, whether a pod fits a
node, what a pod's phase is) can be read and checked on plain dicts, the shapes the API server sends.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path

from kubernetes.utils import parse_quantity

# What the executor offers in place of a container image's filesystem: the repository's virtualenv first.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # bytes, as the kubelet truncates
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048

Lookup = Callable[[str, str, str], Mapping[str, str] | None]
"""lookup(kind, namespace, name) -> decoded data of a ConfigMap ("configmap") or Secret ("secret"), or None"""


class ConfigError(Exception):
    """A container cannot start yet: a referenced ConfigMap/Secret/key is missing (kubelet:
    CreateContainerConfigError). The executor retries, as the kubelet does."""


# ---- environment --------------------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` escapes, unknown stay verbatim."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


def field_value(pod: Mapping, field_path: str) -> str:
    """The downward API's fieldRef values the executor can fill (status IPs are loopback)."""
    meta = pod["metadata"]
    spec = pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "metadata.labels": _format_map(meta.get("labels") or {}),
        "metadata.annotations": _format_map(meta.get("annotations") or {}),
    }
    if field_path in simple:
        return simple[field_path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise ConfigError(f"fieldRef {field_path!r} is not supported by the pod executor")


def _format_map(values: Mapping[str, str]) -> str:
    return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))


def resource_value(pod: Mapping, container_name: str, ref: Mapping, allocatable: Mapping[str, str]) -> str:
    """resourceFieldRef: the container's limit (the node's allocatable when unset) divided by divisor."""
    container = next(
        (c for c in all_containers(pod) if c["name"] == (ref.get("containerName") or container_name)), {}
    )
    kind, _, resource = ref["resource"].partition(".")
    value = (container.get("resources", {}).get(kind) or {}).get(resource)
    if value is None:
        value = allocatable.get(resource, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


def container_env(
    pod: Mapping,
    container: Mapping,
    base: Mapping[str, str],
    lookup: Lookup,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The process environment: base (PATH, service host...), then envFrom, then env, in order, with
    $(VAR) expanded against what is defined before, as the kubelet does."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("configMapRef", "secretRef"):
            if kind in source:
                ref = source[kind]
                data = lookup(_kind(kind), ns, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f"{_kind(kind)} {ns}/{ref['name']} not found (envFrom)")
                env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(var["value"], env)
        elif "valueFrom" in var:
            value = _value_from(pod, container, var["valueFrom"], lookup, allocatable, name)
            if value is not None:
                env[name] = value
        else:
            env[name] = ""
    return env


def _kind(ref_kind: str) -> str:
    return "configmap" if ref_kind.startswith("configMap") else "secret"


def _value_from(pod, container, source, lookup, allocatable, name) -> str | None:
    ns = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_value(pod, container["name"], source["resourceFieldRef"], allocatable)
    for kind in ("configMapKeyRef", "secretKeyRef"):
        if kind in source:
            ref = source[kind]
            data = lookup(_kind(kind), ns, ref["name"])
            if data is not None and ref["key"] in data:
                return data[ref["key"]]
            if ref.get("optional"):
                return None
            what = "not found" if data is None else f"has no key {ref['key']!r}"
            raise ConfigError(f"env {name}: {_kind(kind)} {ns}/{ref['name']} {what}")
    raise ConfigError(f"env {name}: valueFrom {sorted(source)} is not supported by the pod executor")


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in (data or {}).items()}


def command_line(container: Mapping, env: Mapping[str, str]) -> list[str]:
    """command + args with $(VAR) expansion. No image entrypoint exists here: without `command`,
    `args` is the whole command line."""
    argv = [expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not argv:
        raise ConfigError(
            f"container {container['name']!r} has neither command nor args: the pod executor has no image "
            "entrypoint to fall back to; set command (e.g. [python, -m, trainer.qlora])"
        )
    return argv


def probe_port(container: Mapping, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ConfigError(f"probe port {port!r} is not a named port of container {container['name']!r}")


# ---- scheduling ---------------------------------------------------------------------------------


def all_containers(pod: Mapping) -> list[Mapping]:
    spec = pod["spec"]
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def pod_requests(pod: Mapping) -> dict[str, Decimal]:
    """Effective requests: max(sum of containers, largest init container), per resource."""

    def requests(c: Mapping) -> dict[str, Decimal]:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    total: dict[str, Decimal] = {}
    for c in pod["spec"].get("containers") or []:
        for k, v in requests(c).items():
            total[k] = total.get(k, Decimal(0)) + v
    for c in pod["spec"].get("initContainers") or []:
        for k, v in requests(c).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    return total


def _expression_matches(expr: Mapping, labels: Mapping[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels:
        try:
            have, want = int(labels[key]), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def selector_matches(pod: Mapping, labels: Mapping[str, str]) -> bool:
    """nodeSelector and required node affinity (terms ORed, expressions ANDed)."""
    spec = pod["spec"]
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or []) for term in terms
    )


def tolerates(tolerations: Iterable[Mapping], taint: Mapping) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if not t.get("key"):
            if t.get("operator") == "Exists":
                return True
            continue
        if t["key"] != taint.get("key"):
            continue
        if t.get("operator") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def unschedulable_reason(pod: Mapping, node: Mapping, node_pods: Iterable[Mapping]) -> str | None:
    """Why `pod` cannot go to `node` (the scheduler's wording), or None when it fits."""
    if node.get("spec", {}).get("unschedulable"):
        return "node(s) were unschedulable"
    if not selector_matches(pod, node["metadata"].get("labels") or {}):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
            pod["spec"].get("tolerations") or [], taint
        ):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    allocatable = node.get("status", {}).get("allocatable") or {}
    active = [p for p in node_pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
    if len(active) + 1 > int(allocatable.get("pods", "110")):
        return "Too many pods"
    used: dict[str, Decimal] = {}
    for p in active:
        for k, v in pod_requests(p).items():
            used[k] = used.get(k, Decimal(0)) + v
    for resource, want in sorted(pod_requests(pod).items()):
        have = parse_quantity(allocatable.get(resource, "0"))
        if want > 0 and used.get(resource, Decimal(0)) + want > have:
            return f"Insufficient {resource}"
    return None


# ---- status -------------------------------------------------------------------------------------


def termination_message(written: str, log_tail: str, policy: str | None, exit_code: int) -> str:
    """What the container wrote to its terminationMessagePath, else (FallbackToLogsOnError, failed)
    the end of its log, truncated as the kubelet does."""
    if written:
        return written.encode()[-MAX_TERMINATION_MESSAGE:].decode("utf-8", errors="replace")
    if policy == "FallbackToLogsOnError" and exit_code != 0:
        tail = "\n".join(log_tail.splitlines()[-FALLBACK_LOG_LINES:])
        return tail.encode()[-FALLBACK_LOG_BYTES:].decode("utf-8", errors="replace")
    return ""


def finished_phase(states: Iterable[Mapping]) -> str:
    """The phase of a pod whose containers all terminated and will not restart (kubelet's getPhase)."""
    return "Succeeded" if all(s["terminated"]["exitCode"] == 0 for s in states) else "Failed"


def log_path(state_dir: Path, namespace: str, pod: str, container: str) -> Path:
    """Where a container's output is kept (appended across restarts) for tests to read."""
    return Path(state_dir) / "logs" / namespace / pod / f"{container}.log"
