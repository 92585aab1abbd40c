"""The `Workspace` resource of group kaito.sh (v1alpha1 and v1beta1 share one shape) as typed dataclasses.

This module is the single source of the API's shape: the CRD's OpenAPI schema (``crd.py``) is generated
from these classes, and ``parse_workspace`` turns a YAML/dict object into them, collecting every shape
problem (unknown field with the nearest known name, wrong type, missing required field) instead of
stopping at the first. Semantic rules (one-of, URL policy, presets, GPU fit) live in ``validation.py``.

Each field is declared with :func:`api_field`, which records its JSON name, whether it is required, a
description and the bounds the API server needs to keep CEL rules within their cost budget.
KAITO puts ``resource``, ``inference``, ``tuning`` and ``status`` at the top level (there is no ``spec``).
"""

# ruff: noqa: RUF009  -- api_field() wraps dataclasses.field() to attach API metadata; defaults are immutable

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.problems import Problem
from contract.suggest import did_you_mean

GROUP = "kaito.sh"
KIND = "Workspace"
PLURAL = "workspaces"  # the CRD's resource name
VERSIONS = ("v1alpha1", "v1beta1")
API_VERSIONS = tuple(f"{GROUP}/{v}" for v in VERSIONS)

# Open objects: the Kubernetes core types KAITO embeds (PodTemplateSpec) and free-form status.
OpenObject = dict[str, Any]
# A Kubernetes VolumeSource: one key, the volume type, mapped to its settings. Only these types: the
# restricted Pod Security Standard's list less secret, configMap, projected and downwardAPI (what the
# Workspace's author may not be allowed to read), plus nfs; checked by validation and a CEL rule (crd.py).
VolumeSource = dict[str, OpenObject]
ALLOWED_VOLUME_TYPES = ("persistentVolumeClaim", "emptyDir", "ephemeral", "csi", "nfs")

MAX_ADAPTERS = 10
NAME_MAX = 253
URL_MAX = 2048


def api_field(
    json_name: str,
    *,
    required: bool = False,
    doc: str = "",
    default: Any = None,
    max_length: int | None = None,
    max_items: int | None = None,
    min_items: int | None = None,
    minimum: int | None = None,
    pattern: str | None = None,
    enum: tuple[str, ...] | None = None,
    fmt: str | None = None,
) -> Any:
    """A dataclass field carrying its API metadata (used by the parser and the CRD generator)."""
    meta = {
        "json": json_name,
        "required": required,
        "doc": doc,
        "max_length": max_length,
        "max_items": max_items,
        "min_items": min_items,
        "minimum": minimum,
        "pattern": pattern,
        "enum": enum,
        "format": fmt,
    }
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LabelSelectorRequirement:
    """One matchExpressions entry of a metav1.LabelSelector."""

    key: str = api_field("key", required=True, doc="key: the label key.", max_length=317)
    operator: str = api_field(
        "operator",
        required=True,
        doc="operator: In, NotIn, Exists or DoesNotExist.",
        enum=("In", "NotIn", "Exists", "DoesNotExist"),
    )
    values: list[str] = api_field(
        "values", doc="values: label values for In/NotIn.", default=[], max_items=64, max_length=63
    )


@dataclass(frozen=True)
class LabelSelector:
    """labelSelector: which nodes run the workload (metav1.LabelSelector)."""

    match_labels: dict[str, str] = api_field(
        "matchLabels", doc="matchLabels: label key -> value.", default={}
    )
    match_expressions: list[LabelSelectorRequirement] = api_field(
        "matchExpressions", doc="matchExpressions: set-based requirements.", default=[], max_items=16
    )


@dataclass(frozen=True)
class ResourceSpec:
    """resource: the GPU nodes. instanceType drives node provisioning; empty means bring your own nodes."""

    instance_type: str = api_field(
        "instanceType",
        doc="instanceType: GPU VM size (e.g. Standard_NC24ads_A100_v4); empty for your own labelled nodes.",
        default="",
        max_length=NAME_MAX,
    )
    label_selector: LabelSelector | None = api_field(
        "labelSelector", required=True, doc="labelSelector: required; selects the GPU nodes."
    )
    count: int = api_field(
        "count", doc="count: deprecated, number of nodes (default 1).", default=1, minimum=1
    )
    preferred_nodes: list[str] = api_field(
        "preferredNodes",
        doc="preferredNodes: deprecated, existing node names.",
        default=[],
        max_items=64,
        max_length=NAME_MAX,
    )


@dataclass(frozen=True)
class PresetOptions:
    """presetOptions: where the preset's model comes from."""

    image: str = api_field("image", doc="image: model image override.", default="", max_length=NAME_MAX * 2)
    image_pull_secrets: list[str] = api_field(
        "imagePullSecrets",
        doc="imagePullSecrets: Secret names for the model image.",
        default=[],
        max_items=16,
        max_length=NAME_MAX,
    )
    model_access_secret: str = api_field(
        "modelAccessSecret",
        doc="modelAccessSecret: Secret with a model hub token.",
        default="",
        max_length=NAME_MAX,
    )


@dataclass(frozen=True)
class PresetSpec:
    """preset: a model from the catalog (``kaito-tune presets`` lists them)."""

    name: str = api_field(
        "name", required=True, doc="name: preset name, e.g. phi-3-mini-4k-instruct.", max_length=NAME_MAX
    )
    access_mode: str = api_field(
        "accessMode", doc="accessMode: deprecated (public|private).", default="", enum=("public", "private")
    )
    preset_options: PresetOptions | None = api_field(
        "presetOptions", doc="presetOptions: model source options."
    )


@dataclass(frozen=True)
class DataSource:
    """A data source: tuning input or adapter source. Exactly one of urls, image, volumeSource (tuning)."""

    name: str = api_field(
        "name", doc="name: adapter name (DNS-1123 label) or input name.", default="", max_length=63
    )
    urls: list[str] = api_field(
        "urls",
        doc="urls: https URLs of data files.",
        default=[],
        max_items=100,
        min_items=1,
        max_length=URL_MAX,
    )
    volume_source: VolumeSource | None = api_field(
        "volumeSource", doc="volumeSource: a Kubernetes VolumeSource."
    )
    image: str = api_field(
        "image", doc="image: OCI image/artifact with files under /data.", default="", max_length=NAME_MAX * 2
    )
    image_pull_secrets: list[str] = api_field(
        "imagePullSecrets",
        doc="imagePullSecrets: Secret names to pull image.",
        default=[],
        max_items=16,
        max_length=NAME_MAX,
    )


@dataclass(frozen=True)
class DataDestination:
    """output: where the adapter goes. Exactly one of image (+ imagePushSecret) or volumeSource."""

    volume_source: VolumeSource | None = api_field(
        "volumeSource", doc="volumeSource: a Kubernetes VolumeSource."
    )
    image: str = api_field(
        "image", doc="image: OCI reference to push the adapter to.", default="", max_length=NAME_MAX * 2
    )
    image_push_secret: str = api_field(
        "imagePushSecret",
        doc="imagePushSecret: docker-registry Secret; required with image.",
        default="",
        max_length=NAME_MAX,
    )


@dataclass(frozen=True)
class AdapterSpec:
    """adapters[]: an adapter served with the base model, weighted by strength."""

    source: DataSource | None = api_field(
        "source", required=True, doc="source: name and image of the adapter."
    )
    strength: str = api_field(
        "strength",
        doc='strength: weight "0.0".."1.0" as a string (default "1.0").',
        default="1.0",
        max_length=32,
        pattern=r"^[0-9]*\.?[0-9]+$",
    )

    @property
    def name(self) -> str:
        """The adapter's name (its source's); empty only in a Workspace that failed validation."""
        return self.source.name if self.source is not None else ""


@dataclass(frozen=True)
class InferenceSpec:
    """inference: serve a preset (or a custom pod template), optionally with adapters."""

    preset: PresetSpec | None = api_field("preset", doc="preset: the model to serve.")
    template: OpenObject | None = api_field(
        "template", doc="template: a PodTemplateSpec instead of a preset."
    )
    config: str = api_field(
        "config", doc="config: ConfigMap with inference settings.", default="", max_length=NAME_MAX
    )
    adapters: list[AdapterSpec] = api_field(
        "adapters", doc=f"adapters: at most {MAX_ADAPTERS}, unique names.", default=[], max_items=MAX_ADAPTERS
    )

    @property
    def preset_name(self) -> str:
        """The served preset's name; empty only in a Workspace that failed validation."""
        return self.preset.name if self.preset is not None else ""


@dataclass(frozen=True)
class TuningSpec:
    """tuning: fine-tune a preset with lora or qlora on the input data and push the adapter to output."""

    preset: PresetSpec | None = api_field("preset", required=True, doc="preset: the base model to tune.")
    method: str = api_field("method", required=True, doc="method: lora or qlora.", default="", max_length=16)
    config: str = api_field(
        "config",
        doc="config: ConfigMap with training_config.yaml (default: the method's template).",
        default="",
        max_length=NAME_MAX,
    )
    input: DataSource | None = api_field(
        "input", required=True, doc="input: exactly one of urls, image, volumeSource."
    )
    output: DataDestination | None = api_field(
        "output", required=True, doc="output: image + imagePushSecret, or volumeSource."
    )


@dataclass(frozen=True)
class Condition:
    """A metav1.Condition."""

    type: str = api_field("type", required=True, doc="type: e.g. ResourceReady, JobStarted.", max_length=316)
    status: str = api_field(
        "status", required=True, doc="status: True, False or Unknown.", enum=("True", "False", "Unknown")
    )
    observed_generation: int = api_field(
        "observedGeneration", doc="observedGeneration: spec generation seen.", default=0, minimum=0
    )
    last_transition_time: str = api_field(
        "lastTransitionTime",
        required=True,
        doc="lastTransitionTime: when status changed.",
        default="",
        fmt="date-time",
    )
    reason: str = api_field(
        "reason", required=True, doc="reason: CamelCase cause.", default="", max_length=1024
    )
    message: str = api_field(
        "message", required=True, doc="message: for people.", default="", max_length=32768
    )


@dataclass(frozen=True)
class WorkspaceStatus:
    """status: written by the controller only."""

    conditions: list[Condition] = api_field("conditions", doc="conditions: metav1.Conditions.", default=[])
    worker_nodes: list[str] = api_field(
        "workerNodes", doc="workerNodes: nodes running the workload.", default=[]
    )
    state: str = api_field("state", doc="state: one-word summary (v1beta1's State column).", default="")
    tuning: OpenObject | None = api_field(
        "tuning",
        doc="tuning: progress, loss, held-out evaluation, MLflow run, adapter digest (controller-defined).",
    )
    inference: OpenObject | None = api_field(
        "inference", doc="inference: serving details (controller-defined)."
    )


@dataclass(frozen=True)
class Workspace:
    """A kaito.sh Workspace."""

    api_version: str = api_field(
        "apiVersion", doc="apiVersion: kaito.sh/v1alpha1 or kaito.sh/v1beta1.", default=""
    )
    kind: str = api_field("kind", doc="kind: Workspace.", default="")
    metadata: OpenObject = api_field("metadata", doc="metadata: ObjectMeta.", default={})
    resource: ResourceSpec | None = api_field("resource", doc="resource: GPU nodes.")
    inference: InferenceSpec | None = api_field(
        "inference", doc="inference: serve a model (one of inference/tuning)."
    )
    tuning: TuningSpec | None = api_field(
        "tuning", doc="tuning: fine-tune a model (one of inference/tuning)."
    )
    status: WorkspaceStatus | None = api_field("status", doc="status: set by the controller.")

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "") or "default")

    def require_tuning(self) -> TuningSpec:
        """The tuning section, for code that only tuning Workspaces reach (ValueError otherwise)."""
        if self.tuning is None:
            raise ValueError(f"Workspace {self.name!r} has no tuning section")
        return self.tuning

    def require_inference(self) -> InferenceSpec:
        """The inference section, for code that only inference Workspaces reach (ValueError otherwise)."""
        if self.inference is None:
            raise ValueError(f"Workspace {self.name!r} has no inference section")
        return self.inference


# ----------------------------------------------------------------------------------------------- typing


@functools.cache
def api_fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    """The dataclass fields of an API class with their resolved types (cached: resolving the hints was
    a seventh of the operator's CPU, once per parse)."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def unwrap_optional(tp: Any) -> Any:
    """`X | None` -> X (the API has no explicit nulls that mean something else than absent)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def unknown_field_hint(word: str, known: typing.Iterable[str]) -> str:
    known = sorted(known)
    guess = did_you_mean(word, known)
    listed = ", ".join(known)
    return f"{guess} known fields: {listed}" if guess else f"known fields: {listed}"


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean (true/false)", float: "a number"}


def _describe(tp: Any) -> str:
    tp = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return _TYPE_NAMES.get(tp, str(tp))


def _parse_value(tp: Any, value: Any, path: str, problems: list[Problem]) -> Any:
    tp = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _parse_object(tp, value, path, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(
                Problem(path, f"must be {_describe(tp)}", value, "write it as a YAML list (- item)")
            )
            return []
        (item_tp,) = typing.get_args(tp)
        return [_parse_value(item_tp, item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(Problem(path, "must be a mapping", value, "write it as key: value lines"))
            return {}
        _, value_tp = typing.get_args(tp)
        for key, item in value.items():
            if value_tp is str and not isinstance(item, str):
                problems.append(
                    Problem(f"{path}.{key}", "must be a string", item, f'quote it: {key}: "{item}"')
                )
            elif typing.get_origin(value_tp) is dict and not isinstance(item, Mapping):
                problems.append(Problem(f"{path}.{key}", "must be a mapping", item, f"write {key}: {{...}}"))
        return dict(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if not ok:
        hint = f'quote it: "{value}"' if tp is str and isinstance(value, int | float | bool) else ""
        problems.append(Problem(path, f"must be {_describe(tp)}", value, hint))
        return None
    return value


def _parse_object(cls: type, data: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(Problem(path or "<root>", "must be a mapping", data, "write it as key: value lines"))
        return None
    fields = api_fields(cls)
    by_json = {f.metadata["json"]: (f, tp) for f, tp in fields}
    prefix = f"{path}." if path else ""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in by_json:
            problems.append(
                Problem(f"{prefix}{key}", "unknown field", None, unknown_field_hint(str(key), by_json))
            )
            continue
        f, tp = by_json[key]
        if value is None:
            continue  # YAML `key:` with no value means absent, as the API server treats null
        parsed = _parse_value(tp, value, f"{prefix}{key}", problems)
        if parsed is not None:
            kwargs[f.name] = parsed
    for f, _tp in fields:
        if f.metadata["required"] and f.metadata["json"] not in data:
            problems.append(Problem(f"{prefix}{f.metadata['json']}", "is required", None, f.metadata["doc"]))
    return cls(**kwargs)


def parse_workspace(obj: Mapping[str, Any]) -> tuple[Workspace, list[Problem]]:
    """Parse a Workspace object (as loaded from YAML or the API) into the typed model plus shape problems.

    The model is always returned (with defaults where values were bad) so semantic validation can still
    run and report further problems in the same pass.
    """
    problems: list[Problem] = []
    ws = _parse_object(Workspace, obj, "", problems)
    if ws is None:
        ws = Workspace()
    return ws, problems


def to_dict(obj: Any) -> Any:
    """The model back to its JSON/YAML form, omitting empty and default-less absent values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = to_dict(getattr(obj, f.name))
            if value in (None, "", [], {}):
                continue
            out[f.metadata["json"]] = value
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
