"""JSON schemas that kubeconform reads offline: built-in kinds from the API server's OpenAPI v3, custom
kinds from their CRDs. Nothing is downloaded: the schemas come from the local control plane we run.

Layout (hack/check-manifests.sh passes it to kubeconform as
-schema-location "DIR/{{ .Group }}/{{ .ResourceKind }}-{{ .ResourceAPIVersion }}.json"):
    <group>/<kind lowercased>-<version>.json      e.g. batch/job-v1.json, kaito.sh/workspace-v1beta1.json
    v1/<kind lowercased>-v1.json                  the core group

Schemas are strict: objects with declared properties get `additionalProperties: false` (unless they say
x-kubernetes-preserve-unknown-fields), so a misspelt field is an error, as with kubeconform -strict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REF_PREFIX = "#/components/schemas/"


def schema_path(root: Path, api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return Path(root) / (group or version) / f"{kind.lower()}-{version}.json"


def strict(schema: Any) -> Any:
    """A copy in which every object with properties refuses unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref[len(REF_PREFIX) :]
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def _closure(definitions: Mapping[str, Any], root: str) -> dict[str, Any]:
    """The definitions reachable from `root` through $ref."""
    seen: dict[str, Any] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions:
            continue
        seen[name] = definitions[name]
        todo.extend(_refs(definitions[name]))
    return seen


def kinds_from_openapi_v3(document: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Standalone schemas of the kinds one group-version document of /openapi/v3 defines, keyed by
    (apiVersion, kind). The referenced definitions travel along under components.schemas."""
    definitions = document.get("components", {}).get("schemas", {})
    result = {}
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            result[(api_version, gvk["kind"])] = {
                "$ref": REF_PREFIX + name,
                "components": {"schemas": strict(_closure(definitions, name))},
            }
    return result


def kinds_from_crd(crd: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """One schema per served version of a CustomResourceDefinition."""
    spec = crd["spec"]
    kind = spec["names"]["kind"]
    return {
        (f"{spec['group']}/{v['name']}", kind): strict(v["schema"]["openAPIV3Schema"])
        for v in spec["versions"]
        if v.get("served", True) and "schema" in v
    }


def write_schemas(root: Path, schemas: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[Path]:
    written = []
    for (api_version, kind), schema in sorted(schemas.items()):
        path = schema_path(root, api_version, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, sort_keys=True))
        written.append(path)
    return written


def write_server_schemas(
    fetch: Callable[[str], Mapping[str, Any]], root: Path, group_versions: list[str]
) -> list[Path]:
    """Fetch /openapi/v3 documents (fetch(path) -> JSON) for `group_versions` ("v1", "batch/v1", ...)
    and write every kind they define; the group-version must be served by the API server."""
    index = fetch("/openapi/v3")["paths"]
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for gv in group_versions:
        key = f"api/{gv}" if "/" not in gv else f"apis/{gv}"
        if key not in index:
            raise KeyError(f"{gv} is not served by the API server (see /openapi/v3)")
        document = fetch("/openapi/v3/" + key)
        schemas.update({k: v for k, v in kinds_from_openapi_v3(document).items() if k[0] == gv})
    return write_schemas(root, schemas)
