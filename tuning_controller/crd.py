"""The CustomResourceDefinition for workspaces.kaito.sh, generated from the dataclasses in ``workspace.py``.

Generating the schema from the model keeps the two from drifting: a field added to the model appears in
the CRD, and tests walk both to prove it. The static rules that the API server can check without our
code (one-of inference/tuning, exactly one input and output, push secret with image, immutability via
``oldSelf``) are CEL ``x-kubernetes-validations`` here; every other rule is in ``validation.py``.
Every string and list that a rule reads is bounded (maxLength/maxItems) so the API server's CEL cost
estimate stays under its budget, and rules prefer has() and plain comparisons to comprehensions:
benchmarks/cel_cost.py measures each rule on a real API server.

    kaito-tune crd | kubectl apply -f -
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

from contract import workspace as api
from contract.workspace import ALLOWED_VOLUME_TYPES, GROUP, KIND, PLURAL, api_fields, unwrap_optional

SHORT_NAMES = ["wk", "wks"]
STORAGE_VERSION = "v1beta1"
LABEL_VALUE_MAX = 63  # the only string maps are matchLabels

# CEL rules by schema location ("" is the root, "a.b[]" the items of list a.b). Messages name the field
# and say what to do, because kubectl shows them verbatim.


def _volume_rules(field: str) -> list[dict[str, str]]:
    allowed = ", ".join(ALLOWED_VOLUME_TYPES)
    return [
        {
            "rule": f"self.all(k, k in {list(ALLOWED_VOLUME_TYPES)})",
            "message": f"{field}: only {allowed} volumes are allowed (hostPath, and Secret or ConfigMap "
            "volumes, would reach what the Workspace's author may not)",
        }
    ]


RULES: dict[str, list[dict[str, str]]] = {
    "tuning.input.volumeSource": _volume_rules("tuning.input.volumeSource"),
    "tuning.output.volumeSource": _volume_rules("tuning.output.volumeSource"),
    "inference.adapters[].source.volumeSource": _volume_rules("inference.adapters[].source.volumeSource"),
    "": [
        {
            "rule": "has(self.inference) != has(self.tuning)",
            "message": "set exactly one of inference or tuning: "
            "a Workspace either serves a model or tunes one",
        },
        {
            "rule": "has(oldSelf.inference) == has(self.inference) && "
            "has(oldSelf.tuning) == has(self.tuning)",
            "message": "inference and tuning cannot be switched on or off by an update: "
            "delete the Workspace and create a new one",
        },
    ],
    "resource": [
        {
            "rule": "(has(self.instanceType) ? self.instanceType : '') == "
            "(has(oldSelf.instanceType) ? oldSelf.instanceType : '')",
            "message": "resource.instanceType is immutable: create a new Workspace for another GPU size",
        },
    ],
    "inference": [
        {
            "rule": "has(self.preset) != has(self.template)",
            "message": "inference: set exactly one of preset or template",
        },
        {
            "rule": "has(self.preset) == has(oldSelf.preset) && "
            "(!has(self.preset) || self.preset.name == oldSelf.preset.name)",
            "message": "inference.preset is immutable: create a new Workspace to serve another model",
        },
    ],
    "inference.adapters": [
        {
            # The names are read once into a list (the one-element list binds it, in the CEL every server
            # with CRD rules has) and compared as plain strings with the Kubernetes list library: a pairwise
            # exists_one over the adapters read each name again per pair, ~2.5 ms of the API server's time
            # per create at MAX_ADAPTERS against ~0.3 ms now (benchmarks/cel_cost.py).
            "rule": "[self.map(a, has(a.source.name), a.source.name)]"
            ".all(names, names.all(n, names.indexOf(n) == names.lastIndexOf(n)))",
            "message": "inference.adapters[].source.name must be unique: rename the duplicate adapter",
        },
    ],
    "inference.adapters[]": [
        {
            "rule": "has(self.source.name) && self.source.name != ''",
            "message": "inference.adapters[].source.name is required: name the adapter (DNS-1123 label)",
        },
        {
            "rule": "has(self.source.image) != has(self.source.volumeSource)",
            "message": "inference.adapters[].source: set exactly one of image or volumeSource",
        },
        {
            "rule": "!has(self.strength) || (double(self.strength) >= 0.0 && double(self.strength) <= 1.0)",
            "message": 'inference.adapters[].strength must be a number from "0.0" to "1.0" as a string',
        },
    ],
    "tuning": [
        {
            "rule": "self.method.lowerAscii() in ['lora', 'qlora']",
            "message": "tuning.method must be lora or qlora",
        },
        {
            "rule": "self.preset == oldSelf.preset",
            "message": "tuning.preset is immutable: create a new Workspace to tune another model",
        },
        {
            "rule": "self.method.lowerAscii() == oldSelf.method.lowerAscii()",
            "message": "tuning.method is immutable: create a new Workspace to tune with another method",
        },
        {
            "rule": "self.input == oldSelf.input",
            "message": "tuning.input is immutable: create a new Workspace to tune on other data",
        },
        {
            "rule": "self.output == oldSelf.output",
            "message": "tuning.output is immutable: create a new Workspace to push elsewhere",
        },
    ],
    "tuning.input": [
        {  # exactly one of three, without building and filtering a list
            "rule": "has(self.urls) ? !has(self.image) && !has(self.volumeSource) "
            ": has(self.image) != has(self.volumeSource)",
            "message": "tuning.input: set exactly one of urls, image or volumeSource",
        },
    ],
    "tuning.output": [
        {
            "rule": "has(self.image) != has(self.volumeSource)",
            "message": "tuning.output: set exactly one of image (with imagePushSecret) or volumeSource",
        },
        {
            "rule": "!has(self.image) || (has(self.imagePushSecret) && self.imagePushSecret != '')",
            "message": "tuning.output.imagePushSecret is required with tuning.output.image: "
            "name the docker-registry Secret that may push to it",
        },
    ],
}


def _condition_column(name: str) -> dict[str, Any]:
    return {"name": name, "type": "string", "jsonPath": f'.status.conditions[?(@.type=="{name}")].status'}


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Instance", "type": "string", "jsonPath": ".resource.instanceType"},
    _condition_column("ResourceReady"),
    _condition_column("InferenceReady"),
    _condition_column("JobStarted"),
    _condition_column("WorkspaceSucceeded"),
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.tuning.progress.percent",
        "description": "Tuning progress in percent",
    },
    {
        "name": "Eval",
        "type": "string",
        "jsonPath": ".status.tuning.evaluation.summary",
        "description": "Held-out loss, base model -> adapter",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
STATE_COLUMN = {"name": "State", "type": "string", "jsonPath": ".status.state"}


def _scalar_schema(tp: Any, meta: dict[str, Any]) -> dict[str, Any]:
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        out: dict[str, Any] = {"type": "integer"}
        if meta.get("minimum") is not None:
            out["minimum"] = meta["minimum"]
        return out
    if tp is str:
        out = {"type": "string"}
        for key, schema_key in (("max_length", "maxLength"), ("pattern", "pattern"), ("format", "format")):
            if meta.get(key) is not None:
                out[schema_key] = meta[key]
        if meta.get("enum"):
            out["enum"] = list(meta["enum"])
        return out
    raise TypeError(f"no schema for {tp!r}")


def type_schema(tp: Any, meta: dict[str, Any], location: str) -> dict[str, Any]:
    """The structural schema of one model type at a schema location (used for CEL rule placement)."""
    tp = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        out = object_schema(tp, location)
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        item_meta = {"max_length": meta.get("max_length")} if item_tp is str else {}
        out = {"type": "array", "items": type_schema(item_tp, item_meta, f"{location}[]")}
        if meta.get("max_items") is not None:
            out["maxItems"] = meta["max_items"]
        if meta.get("min_items") is not None:
            out["minItems"] = meta["min_items"]
    elif origin is dict:
        _, value_tp = typing.get_args(tp)
        if value_tp is str:
            out = {"type": "object", "additionalProperties": {"type": "string", "maxLength": LABEL_VALUE_MAX}}
        elif typing.get_origin(value_tp) is dict:  # VolumeSource: exactly one type -> its settings
            item = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            out = {"type": "object", "additionalProperties": item, "minProperties": 1, "maxProperties": 1}
        else:
            out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    else:
        out = _scalar_schema(tp, meta)
    if meta.get("doc"):
        out["description"] = meta["doc"]
    if location in RULES and not dataclasses.is_dataclass(tp):
        out["x-kubernetes-validations"] = copy.deepcopy(RULES[location])
    return out


def object_schema(cls: type, location: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    prefix = f"{location}." if location else ""
    for f, tp in api_fields(cls):
        name = f.metadata["json"]
        properties[name] = type_schema(tp, dict(f.metadata), f"{prefix}{name}")
        if f.metadata["required"]:
            required.append(name)
    out: dict[str, Any] = {
        "type": "object",
        "description": (cls.__doc__ or "").strip(),
        "properties": properties,
    }
    if required:
        out["required"] = required
    if location in RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(RULES[location])
    return out


def workspace_schema() -> dict[str, Any]:
    """The openAPIV3Schema of a Workspace; the root's metadata stays a plain object as the API requires."""
    schema = object_schema(api.Workspace, "")
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def build_crd() -> dict[str, Any]:
    """The full apiextensions.k8s.io/v1 CustomResourceDefinition for workspaces.kaito.sh."""
    schema = workspace_schema()
    versions = []
    for version in api.VERSIONS:
        columns = PRINTER_COLUMNS + ([STATE_COLUMN] if version == "v1beta1" else [])
        versions.append(
            {
                "name": version,
                "served": True,
                "storage": version == STORAGE_VERSION,
                "schema": {"openAPIV3Schema": copy.deepcopy(schema)},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            }
        )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
                "categories": ["all"],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    }
