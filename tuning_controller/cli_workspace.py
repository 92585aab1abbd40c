"""`kaito-tune validate | render | crd | presets`: the Workspace side of the command line.

    kaito-tune validate examples/**/*.yaml          # every problem of every document; exit 1 on errors
    kaito-tune validate --method qlora my-config.yaml
    kaito-tune render examples/tuning/kaito_workspace_tuning_phi_3.yaml | kubectl apply --dry-run=server -f -
    kaito-tune crd | kubectl apply -f -
    kaito-tune presets phi-3-mini-4k-instruct

``validate`` accepts Workspaces, ConfigMaps holding ``training_config.yaml`` and bare training_config
documents, in any mix and in multi-document files; a ConfigMap in the same files that a Workspace names
in ``tuning.config`` is checked with that Workspace's method, preset and GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from artifacts.hosts import parse_network
from contract.pod import CONFIG_KEY
from contract.problems import Problem, Severity, errors
from contract.training_config import ROOT, validate_training_config
from contract.workspace import KIND, parse_workspace
from presets.catalog import GpuSku, UnknownName, get_model, get_sku, models, skus
from presets.memory import estimate
from tuning_controller.crd import build_crd
from tuning_controller.render import render_workspace_objects
from tuning_controller.settings import settings_from_env
from tuning_controller.validation import validate_workspace

DEFAULT_SEQ_LEN = 1024  # TRL SFTConfig.max_length
# Objects a Workspace refers to, accepted beside it in one file (examples/ ships them) but not checked here.
# Kueue's queues too: a Workspace names its LocalQueue (examples/kueue).
COMPANION_KINDS = ("Secret", "PersistentVolumeClaim", "ResourceFlavor", "ClusterQueue", "LocalQueue")


@dataclass
class Document:
    """One YAML document of an input file, classified; ``problems`` holds what loading already found."""

    file: str
    index: int
    kind: str  # Workspace | ConfigMap | training_config | unknown | error
    body: Any = None
    config: Any = None  # the parsed training_config.yaml of a ConfigMap
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        meta = self.body.get("metadata") if isinstance(self.body, Mapping) else None
        return str(meta.get("name", "")) if isinstance(meta, Mapping) else ""

    @property
    def label(self) -> str:
        where = f"{self.file}" + (f" (document {self.index + 1})" if self.index else "")
        return where if self.kind == "error" else f"{where}: {self.kind} {self.name}".rstrip()


def _syntax_problem(exc: yaml.YAMLError, where: str = "") -> Problem:
    """A YAML error as a problem whose path is its position: ``<where> line L, column C``."""
    mark = getattr(exc, "problem_mark", None)
    position = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
    detail = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    path = f"{where} {position}".strip()
    return Problem(path, f"YAML syntax error: {detail}" + (f" ({context})" if context else ""))


def load_documents(path: str) -> list[Document]:
    """Every document of a YAML file, classified, with syntax errors reported by line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        return [Document(path, 0, "error", problems=[Problem("<file>", f"cannot be read: {exc.strerror}")])]
    docs: list[Document] = []
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        return [Document(path, 0, "error", problems=[_syntax_problem(exc)])]
    for index, body in enumerate(loaded):
        if body is None:
            continue
        docs.append(_classified(Document(path, index, "unknown", body)))
    return docs


def _classified(doc: Document) -> Document:
    """``doc`` with its kind set (and a ConfigMap's training config parsed), or a problem saying why not."""
    body = doc.body
    if isinstance(body, Mapping) and body.get("kind") == KIND:
        doc.kind = KIND
    elif isinstance(body, Mapping) and body.get("kind") == "ConfigMap":
        doc.kind = "ConfigMap"
        data = body.get("data") or {}
        raw = data.get(CONFIG_KEY) if isinstance(data, Mapping) else None
        if not isinstance(raw, str):
            doc.problems.append(
                Problem(f"data[{CONFIG_KEY}]", "is missing: this ConfigMap holds no training config")
            )
        else:
            try:
                doc.config = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                doc.problems.append(_syntax_problem(exc, f"data[{CONFIG_KEY}]"))
    elif isinstance(body, Mapping) and ROOT in body:
        doc.kind = ROOT
    elif isinstance(body, Mapping) and body.get("kind") in COMPANION_KINDS:
        doc.kind = (
            "other"  # what a Workspace names (push Secret, output PVC, queue): the API server's to check
        )
    else:
        doc.problems.append(
            Problem("<document>", f"is not a Workspace, a ConfigMap with {CONFIG_KEY}, or a {ROOT} document")
        )
    return doc


def _referenced_configmaps(docs: list[Document]) -> set[str]:
    """Names of ConfigMaps that a Workspace in the same input names in tuning.config."""
    names = set()
    for doc in docs:
        if doc.kind == KIND:
            ws, _ = parse_workspace(doc.body)
            if ws.tuning is not None and ws.tuning.config:
                names.add(ws.tuning.config)
    return names


def _configmaps(docs: list[Document]) -> dict[str, Any]:
    return {d.name: d.config for d in docs if d.kind == "ConfigMap" and d.config is not None}


def check_documents(
    docs: list[Document], method: str | None, allowed_networks: Sequence[str] = (), model_registry: str = ""
) -> list[tuple[Document, Problem]]:
    """Validate every document; ConfigMaps referenced by a Workspace get its method, preset and SKU.

    ``allowed_networks``: input URL hosts allowed despite the SSRF policy (the controller's
    KAITO_TUNE_ALLOWED_URL_NETWORKS); ``model_registry``: the cluster's mirror of preset weights (its
    KAITO_TUNE_MODEL_REGISTRY)."""
    configmaps = _configmaps(docs)
    referenced = _referenced_configmaps(docs)
    found: list[tuple[Document, Problem]] = []
    for doc in docs:
        problems = list(doc.problems)
        if doc.kind == KIND:
            ws, _ = parse_workspace(doc.body)
            user_config = (
                configmaps.get(ws.tuning.config) if ws.tuning is not None and ws.tuning.config else None
            )
            problems += validate_workspace(
                doc.body,
                allowed_url_networks=allowed_networks,
                training_config=user_config,
                model_registry=model_registry,
            )
        elif doc.kind == "ConfigMap" and doc.config is not None and doc.name not in referenced:
            path = f"data[{CONFIG_KEY}].{ROOT}"
            problems += validate_training_config(doc.config, method, path=path)
        elif doc.kind == ROOT:
            problems += validate_training_config(doc.body, method)
        found += [(doc, p) for p in problems]
    return found


def _validate(args: argparse.Namespace) -> int:
    docs = [doc for path in args.files for doc in load_documents(path)]
    found = check_documents(docs, args.method, args.allow_url_network, args.model_registry)
    for doc, problem in found:
        print(f"{doc.label}: {problem}")
    problems = [p for _, p in found]
    n_errors = len(errors(problems))
    n_warnings = sum(p.severity is Severity.WARNING for p in problems)
    checked = sum(d.kind in (KIND, "ConfigMap", ROOT) for d in docs)
    verdict = "invalid" if n_errors else "valid"
    print(
        f"{verdict}: {checked} document(s) in {len(args.files)} file(s), "
        f"{n_errors} error(s), {n_warnings} warning(s)"
    )
    return 1 if n_errors else 0


def _render(args: argparse.Namespace) -> int:
    # The controller's settings (images, auto-provisioning, ...) from the same KAITO_TUNE_* variables.
    # --allow-url-network adds to KAITO_TUNE_ALLOWED_URL_NETWORKS.
    env = settings_from_env(os.environ)
    networks = tuple(dict.fromkeys([*env.allowed_url_networks, *args.allow_url_network]))
    settings = replace(env, allowed_url_networks=networks, model_registry=args.model_registry)
    docs = load_documents(args.file)
    found = check_documents(docs, None, settings.allowed_url_networks, settings.model_registry)
    failed = [(d, p) for d, p in found if p.severity is Severity.ERROR]
    if failed:
        for doc, problem in failed:
            print(f"{doc.label}: {problem}", file=sys.stderr)
        return 1
    configmaps = _configmaps(docs)
    objects = []
    for doc in docs:
        if doc.kind != KIND:
            continue
        ws, _ = parse_workspace(doc.body)
        user_config = configmaps.get(ws.tuning.config) if ws.tuning and ws.tuning.config else None
        try:
            objects += render_workspace_objects(ws, settings, user_config)
        except ValueError as exc:  # what a valid Workspace still needs: its tuning.config ConfigMap
            print(f"{doc.label}: {exc}: add it to {args.file}", file=sys.stderr)
            return 1
    if not objects:
        print(f"{args.file}: no Workspace to render", file=sys.stderr)
    sys.stdout.write(dump_yaml(objects))
    return 0


class _ReadableDumper(yaml.SafeDumper):
    """YAML for people: repeated subtrees in full (no anchors) and multi-line strings as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _block_strings)


def dump_yaml(objects: list[Any]) -> str:
    return yaml.dump_all(objects, Dumper=_ReadableDumper, sort_keys=False)


def _crd(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_yaml([build_crd()]))
    return 0


def preset_report(
    name: str, *, micro_batch: int, seq_len: int, gradient_checkpointing: bool
) -> dict[str, Any]:
    """A preset with its memory need per method and the SKUs whose GPUs hold it."""
    preset = get_model(name)
    methods = {}
    for method in preset.methods:
        found = estimate(
            preset,
            method,
            micro_batch=micro_batch,
            seq_len=seq_len,
            gradient_checkpointing=gradient_checkpointing,
        )
        fits = sorted((s for s in skus() if s.gpu_memory_gib >= found.total_gib), key=_sku_order)
        methods[method] = {
            "estimate_gib": found.breakdown(),
            "fitting_skus": [s.name for s in fits],
            "smallest_fit_per_cloud": {cloud: _smallest(fits, cloud) for cloud in ("azure", "aws", "gcp")},
        }
    return {
        "name": preset.name,
        "aliases": list(preset.aliases),
        "repo_id": preset.repo_id,
        "revision": preset.revision,
        "architecture": preset.architecture,
        "parameters": preset.parameters,
        "context_length": preset.max_position_embeddings,
        "target_modules": list(preset.target_modules),
        "local_build": preset.local_build,
        "assumptions": {
            "micro_batch": micro_batch,
            "seq_len": seq_len,
            "gradient_checkpointing": gradient_checkpointing,
            "lora_r": 8,
        },
        "methods": methods,
    }


def _sku_order(sku: GpuSku) -> tuple:
    """Cheapest-looking first: least memory per GPU, fewest GPUs, then catalog order (smaller VMs first)."""
    return (sku.gpu_memory_gib, sku.gpu_count, [s.name for s in skus()].index(sku.name))


def _smallest(fits: list[GpuSku], cloud: str) -> str | None:
    return next((s.name for s in fits if s.cloud == cloud), None)


def _print_report(report: dict[str, Any], full: bool) -> None:
    billions = report["parameters"] / 1e9
    alias = f" (alias {', '.join(report['aliases'])})" if report["aliases"] else ""
    print(
        f"{report['name']}{alias}: {report['repo_id']}@{report['revision'][:12]}, {billions:.2f}B parameters,"
    )
    print(
        f"  {report['architecture']}, context {report['context_length']}, "
        f"LoRA on {', '.join(report['target_modules'])}"
    )
    for method, info in report["methods"].items():
        parts = info["estimate_gib"]
        detail = ", ".join(f"{k} {v:g}" for k, v in parts.items() if k != "total")
        print(f"  {method:<5} needs {parts['total']:.1f} GiB per GPU ({detail})")
        if full:
            for cloud in ("azure", "aws", "gcp"):
                names = [n for n in info["fitting_skus"] if get_sku(n).cloud == cloud]
                total = sum(s.cloud == cloud for s in skus())
                print(f"        fits on {cloud} ({len(names)} of {total}): {', '.join(names) or 'none'}")
        else:
            smallest = ", ".join(f"{c} {n}" for c, n in info["smallest_fit_per_cloud"].items() if n)
            print(f"        fits {len(info['fitting_skus'])} SKUs; smallest: {smallest or 'none'}")


def _presets(args: argparse.Namespace) -> int:
    try:
        names = [get_model(args.name).name] if args.name else [p.name for p in models()]
    except UnknownName as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    reports = [
        preset_report(
            n,
            micro_batch=args.micro_batch,
            seq_len=args.seq_len,
            gradient_checkpointing=not args.no_gradient_checkpointing,
        )
        for n in names
    ]
    if args.json:
        print(json.dumps(reports if not args.name else reports[0], indent=2))
        return 0
    first = reports[0]["assumptions"]
    checkpointing = "on" if first["gradient_checkpointing"] else "off"
    print(
        f"Estimates per GPU for micro-batch {first['micro_batch']}, sequence {first['seq_len']}, gradient "
        f"checkpointing {checkpointing}, LoRA r 8 (see presets/memory.py for the formula)\n"
    )
    for report in reports:
        _print_report(report, full=bool(args.name))
    return 0


def _network(text: str) -> str:
    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_allow_url_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-url-network",
        action="append",
        default=[],
        type=_network,
        metavar="CIDR",
        help="accept input URL hosts in this network despite the SSRF policy (repeatable), as the "
        "controller's KAITO_TUNE_ALLOWED_URL_NETWORKS does: an in-cluster or air-gapped data server, "
        "or 127.0.0.0/8 for local development",
    )
    parser.add_argument(
        "--model-registry",
        default=os.environ.get("KAITO_TUNE_MODEL_REGISTRY", ""),
        metavar="PREFIX",
        help="the cluster's mirror of preset weights, as the controller's KAITO_TUNE_MODEL_REGISTRY "
        "(default: that variable): presets come from PREFIX/<preset>:<revision> instead of the hub",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check Workspaces and training configs; exit 1 on errors",
        description="Check Workspaces, ConfigMaps with training_config.yaml, and bare training_config files.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--method", choices=("lora", "qlora"), help="method for bare training configs")
    _add_allow_url_network(validate)
    validate.set_defaults(func=_validate)

    render = subparsers.add_parser(
        "render",
        help="print every object the controller would create (YAML stream)",
        description="Every object the controller creates for each Workspace in FILE, tuning (training "
        "config, data Job, RBAC, results claim, NodeClaim, training Job) or inference (NodeClaim, "
        "Services, Deployment/StatefulSet); settings from the controller's KAITO_TUNE_* variables.",
    )
    render.add_argument("file", metavar="FILE")
    _add_allow_url_network(render)
    render.set_defaults(func=_render)

    crd = subparsers.add_parser("crd", help="print the workspaces.kaito.sh CustomResourceDefinition")
    crd.set_defaults(func=_crd)

    presets = subparsers.add_parser("presets", help="list model presets with memory needs and SKUs that fit")
    presets.add_argument("name", nargs="?", metavar="NAME", help="one preset, with every SKU that fits")
    presets.add_argument("--json", action="store_true", help="machine-readable output")
    presets.add_argument("--micro-batch", type=int, default=1, help="per-GPU micro-batch (default 1)")
    presets.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="tokens per row (default 1024)")
    presets.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="estimate without checkpointing"
    )
    presets.set_defaults(func=_presets)
