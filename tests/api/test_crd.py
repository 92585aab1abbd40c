"""The generated CRD: structural schema, versions, printer columns, CEL rules, and equality with the model.

The API server's own acceptance (and its CEL messages) is tested against a real kube-apiserver in
tests/controlplane; here the structure is checked so a bad schema fails in a second, not in a cluster.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

import pytest

from contract import workspace as api
from contract.workspace import api_fields, unwrap_optional
from tuning_controller.crd import PRINTER_COLUMNS, RULES, build_crd, workspace_schema

SPEC_FIELDS = ("resource", "inference", "tuning")


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its location ("a.b", "a.b[]")."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


def test_identity_and_names(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "workspaces.kaito.sh"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("Workspace", "workspaces", ["wk", "wks"])
    assert crd["spec"]["scope"] == "Namespaced"


def test_versions_share_one_schema_and_one_is_stored(crd: dict[str, Any]) -> None:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1", "v1beta1"]
    assert all(v["served"] for v in versions)
    assert [v["name"] for v in versions if v["storage"]] == ["v1beta1"]
    assert versions[0]["schema"] == versions[1]["schema"]
    assert all(v["subresources"] == {"status": {}} for v in versions)


def test_printer_columns(crd: dict[str, Any]) -> None:
    for version in crd["spec"]["versions"]:
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert names[:8] == [
            "Instance",
            "ResourceReady",
            "InferenceReady",
            "JobStarted",
            "WorkspaceSucceeded",
            "Progress",
            "Eval",
            "Age",
        ]
    assert any(c["name"] == "State" for c in crd["spec"]["versions"][1]["additionalPrinterColumns"])
    columns = {c["name"]: c["jsonPath"] for c in PRINTER_COLUMNS}
    assert columns["Progress"] == ".status.tuning.progress.percent"
    assert columns["Eval"] == ".status.tuning.evaluation.summary"  # base -> adapter, e.g. 2.31->0.84


def test_schema_is_structural() -> None:
    """Every node has a type; properties only on objects, items only on arrays; no spec at the root."""
    schema = workspace_schema()
    for path, node in walk(schema):
        assert "type" in node, f"{path or '<root>'} has no type"
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", path
            assert not ("properties" in node and "additionalProperties" in node), path
        if "items" in node:
            assert node["type"] == "array", path
        assert "$ref" not in node and "nullable" not in node, path
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert "spec" not in schema["properties"]
    assert {"resource", "inference", "tuning", "status"} <= set(schema["properties"])


def test_spec_strings_and_lists_are_bounded_for_cel_cost() -> None:
    schema = workspace_schema()
    for path, node in walk(schema):
        if not path.startswith(SPEC_FIELDS):
            continue
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, f"{path} is an unbounded string"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path} is an unbounded list"


def test_open_objects_are_only_the_embedded_kubernetes_types() -> None:
    open_paths = {
        p for p, node in walk(workspace_schema()) if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert open_paths == {  # a volumeSource is a map: one allowed type -> its (open) settings
        "inference.template",
        "inference.adapters[].source.volumeSource{}",
        "tuning.input.volumeSource{}",
        "tuning.output.volumeSource{}",
        "status.tuning",
        "status.inference",
    }


def test_cel_rules_sit_where_declared_and_explain_themselves() -> None:
    nodes = dict(walk(workspace_schema()))
    for location, rules in RULES.items():
        assert location in nodes, f"rule location {location!r} is not in the schema"
        assert nodes[location]["x-kubernetes-validations"] == rules
        for rule in rules:
            assert rule["message"] and rule["rule"]
            field_named = location.split(".")[0] if location else "inference"
            assert field_named in rule["message"], rule["message"]


def test_required_static_rules_are_present() -> None:
    text = " ".join(r["rule"] for rules in RULES.values() for r in rules)
    for fragment in (
        "has(self.inference) != has(self.tuning)",
        "has(self.imagePushSecret)",
        "has(self.urls) ? !has(self.image) && !has(self.volumeSource)",
        "names.indexOf(n) == names.lastIndexOf(n)",
        "self.preset == oldSelf.preset",
        "self.input == oldSelf.input",
        "has(oldSelf.tuning) == has(self.tuning)",
    ):
        assert fragment in text


def _model_paths(cls: type, prefix: str = "") -> set[str]:
    """Every JSON field path of the dataclass model, as schema locations."""
    out = set()
    for f, tp in api_fields(cls):
        path = f"{prefix}{f.metadata['json']}"
        out.add(path)
        inner = unwrap_optional(tp)
        if typing.get_origin(inner) is list:
            (inner,) = typing.get_args(inner)
            path += "[]"
        if dataclasses.is_dataclass(inner):
            out |= _model_paths(inner, f"{path}.")
    return out


def test_crd_and_model_have_exactly_the_same_fields() -> None:
    schema_paths = {p.replace("[]", "") for p, _ in walk(workspace_schema()) if p and not p.endswith("{}")}
    model_paths = {p.replace("[]", "") for p in _model_paths(api.Workspace)}
    assert schema_paths == model_paths


def test_required_fields_match_the_model() -> None:
    nodes = dict(walk(workspace_schema()))
    for path, node in nodes.items():
        for required in node.get("required", []):
            assert required in node["properties"], f"{path}.{required}"
    assert nodes["tuning"]["required"] == ["preset", "method", "input", "output"]
    assert nodes["resource"]["required"] == ["labelSelector"]
    assert nodes["inference.adapters"]["maxItems"] == api.MAX_ADAPTERS
