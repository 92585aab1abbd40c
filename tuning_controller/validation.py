"""Every problem of a Workspace, found before anything is created: KAITO's rules, and what KAITO misses.

``validate_workspace`` runs the shape parse (unknown fields, types), KAITO's rules (one of inference or
tuning, exactly one input and output, push secret with image, image references, input URL policy,
adapters, DNS-1123 names, immutability against the old object) and this project's additions (presets
exist and support the method, every key of the training config, GPU memory fit, known GPU issues as
warnings). It returns all problems; callers decide (the CLI prints them, the controller reports them
in a condition). The CRD's CEL rules repeat the static subset so the API server refuses early too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from artifacts.fetch import file_name
from contract.eval_files import names_listing, unmatched_patterns
from contract.pod import CONFIG_KEY, StrengthError, parse_strength
from contract.problems import Problem, Severity
from contract.training_config import ROOT, Method, validate_training_config
from contract.workspace import (
    API_VERSIONS,
    GROUP,
    KIND,
    MAX_ADAPTERS,
    AdapterSpec,
    InferenceSpec,
    LabelSelector,
    PresetSpec,
    ResourceSpec,
    TuningSpec,
    Workspace,
    parse_workspace,
    to_dict,
)
from presets.catalog import GpuSku, ModelPreset, UnknownName, get_model, get_sku
from tuning_controller.field_checks import (
    DNS1123_SUBDOMAIN,
    LABEL_VALUE,
    data_source_problems,
    image_problems,
    name_problems,
    output_problems,
    secret_name_problems,
)
from tuning_controller.gpu_fit import fit_problems, inference_fit_problems
from tuning_controller.model_source import source_problems
from tuning_controller.render.configmap import TrainingConfig, choose_training_config
from tuning_controller.render.nodeclaim import NODE_IMAGE_FAMILY_ANNOTATION
from tuning_controller.training_targets import target_problems


def _lookup(
    path: str, name: str, getter: Callable[[str], Any], kind: str, hint: str = ""
) -> tuple[Any, list[Problem]]:
    try:
        return getter(name), []
    except UnknownName as exc:
        return None, [Problem(path, f"is not a known {kind}", name, f"{exc}{hint}")]


# The labels the controller puts on what it creates (render.meta.labels, the NodeClaim's namespace
# label): a NodeClaim also carries the selector's matchLabels, which must not pass for these.
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", f"{GROUP}/")


def _label_key_problems(path: str, key: str) -> list[Problem]:
    """A Kubernetes label key ([prefix/]name: a DNS subdomain of at most 253, a name of at most 63), and
    none of the controller's own, which its NodeClaims carry beside the selector's labels."""
    prefix, _, name = key.rpartition("/")
    if (
        not name
        or len(name) > 63
        or not LABEL_VALUE.match(name)
        or len(prefix) > 253
        or (prefix and not DNS1123_SUBDOMAIN.match(prefix))
    ):
        return [
            Problem(
                f"{path}.{key}",
                "is not a valid label key: [DNS-subdomain prefix/]name, the name 63 alphanumerics, '-', "
                "'_', '.'",
                key,
            )
        ]
    if key.startswith(RESERVED_LABEL_PREFIXES):
        return [
            Problem(
                f"{path}.{key}",
                "is a label the controller sets on what it creates (NodeClaims carry the selector's labels)",
                key,
                f"use a key outside {' and '.join(RESERVED_LABEL_PREFIXES)}",
            )
        ]
    return []


def _selector_problems(selector: LabelSelector | None) -> list[Problem]:
    if selector is None:
        return []  # reported as required by the parser
    path = "resource.labelSelector"
    if not selector.match_labels and not selector.match_expressions:
        return [
            Problem(
                path, "must select something: an empty selector matches every node", None, "add matchLabels"
            )
        ]
    problems = []
    for key, value in selector.match_labels.items():
        problems += _label_key_problems(f"{path}.matchLabels", key)
        if isinstance(value, str) and (len(value) > 63 or not LABEL_VALUE.match(value)):
            problems.append(
                Problem(
                    f"{path}.matchLabels.{key}",
                    "is not a valid label value (63 alphanumerics, '-', '_', '.')",
                    value,
                )
            )
    return problems


def _resource_problems(resource: ResourceSpec | None, ws: Workspace) -> tuple[GpuSku | None, list[Problem]]:
    if resource is None:
        return None, [
            Problem("resource", "is required", None, "set resource.instanceType and resource.labelSelector")
        ]
    problems = _selector_problems(resource.label_selector)
    if resource.count < 1:
        problems.append(Problem("resource.count", "must be at least 1", resource.count))
    if resource.preferred_nodes:
        problems.append(
            Problem(
                "resource.preferredNodes",
                "is deprecated",
                None,
                "label the nodes and select them",
                Severity.WARNING,
            )
        )
    sku = None
    if resource.instance_type:
        sku, found = _lookup(
            "resource.instanceType",
            resource.instance_type,
            get_sku,
            "instance type",
            "; or leave instanceType empty to use your own nodes chosen by labelSelector",
        )
        problems += found
    return sku, problems


def _tuning_problems(
    tuning: TuningSpec,
    sku: GpuSku | None,
    *,
    allowed_networks: Sequence[str],
    training_config: Mapping[str, Any] | TrainingConfig | None,
    model_registry: str,
) -> list[Problem]:
    method, problems = _method_problems(tuning.method)
    preset, found = _tuning_preset_problems(tuning, method, model_registry)
    problems += found
    if tuning.input is not None:
        problems += data_source_problems(
            "tuning.input", tuning.input, allowed_networks=allowed_networks, for_adapter=False
        )
    if tuning.output is not None:
        problems += output_problems(tuning.output)
    if tuning.config:
        problems += name_problems("tuning.config", tuning.config, what="ConfigMap", label=False)
    if method is not None:
        config = (
            training_config
            if isinstance(training_config, TrainingConfig)
            else choose_training_config(tuning, training_config)
        )
        problems += _training_config_problems(method, preset, sku, config)
        problems += _gate_problems(tuning, config)
        problems += _eval_file_url_problems(tuning, config)
    return problems


def _config_root(config: TrainingConfig) -> str:
    """Where the training config's root sits, as problems name it: the user's ConfigMap key, or the
    template the controller chose."""
    where = f"{config.source}[{CONFIG_KEY}]" if config.from_user else config.source
    return f"{where}.{ROOT}"


def _config_option(config: TrainingConfig | None, section: str, key: str) -> Any:
    """``training_config.<section>.<key>`` of the chosen config; None where it is unset or where a level
    is not a mapping (validate_training_config reports that)."""
    sections = config.doc.get(ROOT) if config is not None else None
    options = sections.get(section) if isinstance(sections, Mapping) else None
    return options.get(key) if isinstance(options, Mapping) else None


def _gate_problems(tuning: TuningSpec, config: TrainingConfig | None) -> list[Problem]:
    """EvaluationConfig.min_improvement holds the push back; a volume output has no push to hold."""
    value = _config_option(config, "EvaluationConfig", "min_improvement")
    if config is None or value is None or tuning.output is None or tuning.output.volume_source is None:
        return []
    return [
        Problem(
            f"{_config_root(config)}.EvaluationConfig.min_improvement",
            "gates the push, and tuning.output.volumeSource has none: the adapter is written into the "
            "volume whatever its held-out loss",
            value,
            "use tuning.output.image, or unset min_improvement (status.tuning.evaluation shows both "
            "losses either way)",
        )
    ]


def _eval_file_url_problems(tuning: TuningSpec, config: TrainingConfig | None) -> list[Problem]:
    """Each DatasetConfig.eval_files pattern must match a file tuning.input.urls is saved under (the names
    fetch-data gives them), or the pre-flight refuses the data after the download. An image's or a
    volume's files are known only there: the pre-flight checks those."""
    patterns = _config_option(config, "DatasetConfig", "eval_files")
    if config is None or tuning.input is None or not tuning.input.urls or not isinstance(patterns, list):
        return []
    taken: set[str] = set()
    names = [file_name(url, index, taken) for index, url in enumerate(tuning.input.urls)]
    unmatched = set(unmatched_patterns([p for p in patterns if isinstance(p, str)], names))
    return [
        Problem(
            f"{_config_root(config)}.DatasetConfig.eval_files[{index}]",
            f"matches none of the files tuning.input.urls are saved as ({names_listing(names)})",
            pattern,
            "name one of them (a URL is saved under its last path segment), or a glob that matches one",
        )
        for index, pattern in enumerate(patterns)
        if isinstance(pattern, str) and pattern in unmatched
    ]


def _method_problems(value: str) -> tuple[Method | None, list[Problem]]:
    """The method ``tuning.method`` names (any case, as KAITO accepts it), or None with the error."""
    method = Method.parse(value)
    if method is None:
        return None, [Problem("tuning.method", "must be lora or qlora", value)]
    if value != method:
        return method, [
            Problem(
                "tuning.method",
                "is accepted in any case; write it in lower case",
                value,
                severity=Severity.WARNING,
            )
        ]
    return method, []


def _tuning_preset_problems(
    tuning: TuningSpec, method: Method | None, model_registry: str
) -> tuple[ModelPreset | None, list[Problem]]:
    if tuning.preset is None:
        return None, []
    preset, problems = _lookup("tuning.preset.name", tuning.preset.name, get_model, "model preset")
    if preset is None:
        return None, problems
    problems += _preset_options_problems("tuning.preset", tuning.preset, preset, model_registry)
    if method and method not in preset.methods:
        problems.append(
            Problem(
                "tuning.method",
                f"{preset.name} cannot be tuned with {method}",
                str(method),
                f"use {' or '.join(preset.methods)}",
            )
        )
    return preset, problems


def _training_config_problems(
    method: Method,
    preset: ModelPreset | None,
    sku: GpuSku | None,
    config: TrainingConfig | None,
) -> list[Problem]:
    """The chosen training config (the user's ConfigMap, else KAITO's template), when the caller has it."""
    problems: list[Problem] = []
    if config is not None:
        path = _config_root(config)
        problems += validate_training_config(config.doc, method, path=path)
        problems += target_problems(config.doc, sku=sku, preset=preset, path=path)
    if preset is not None and sku is not None:
        problems += fit_problems(preset, method, sku, config.doc if config is not None else None)
    return problems


def _preset_options_problems(
    path: str, spec: PresetSpec, preset: ModelPreset, model_registry: str
) -> list[Problem]:
    """The weights' source (model_source's rules) and the names of the Secrets it uses."""
    options = spec.preset_options
    problems = source_problems(path, preset, options, model_registry)
    if options is not None:
        if options.image:
            problems += image_problems(f"{path}.presetOptions.image", options.image)
        for i, secret in enumerate(options.image_pull_secrets):
            problems += secret_name_problems(f"{path}.presetOptions.imagePullSecrets[{i}]", secret)
        if options.model_access_secret:
            problems += secret_name_problems(
                f"{path}.presetOptions.modelAccessSecret", options.model_access_secret, placeholder_ok=False
            )
    return problems


def _inference_problems(inference: InferenceSpec, sku: GpuSku | None, model_registry: str) -> list[Problem]:
    problems: list[Problem] = []
    if (inference.preset is None) == (inference.template is None):
        problems.append(Problem("inference", "set exactly one of preset or template", None))
    elif inference.template is not None:  # KAITO's custom pod template: nothing here would run it
        problems.append(
            Problem(
                "inference.template",
                "is not supported: this operator serves presets (with adapters), not custom pod templates",
                None,
                "use inference.preset with a name from `kaito-tune presets`, or run your own Deployment",
            )
        )
    if inference.preset is not None:
        preset, found = _lookup("inference.preset.name", inference.preset.name, get_model, "model preset")
        problems += found
        if preset is not None:
            problems += _preset_options_problems("inference.preset", inference.preset, preset, model_registry)
        if preset is not None and sku is not None:
            problems += inference_fit_problems(preset, sku)
    if inference.config:
        problems += name_problems("inference.config", inference.config, what="ConfigMap", label=False)
    if len(inference.adapters) > MAX_ADAPTERS:
        problems.append(
            Problem("inference.adapters", f"at most {MAX_ADAPTERS} adapters", len(inference.adapters))
        )
    problems += _adapter_problems(inference.adapters)
    return problems


def _adapter_problems(adapters: Sequence[AdapterSpec]) -> list[Problem]:
    """Each adapter's name (unique DNS-1123 label), image source and strength."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, adapter in enumerate(adapters):
        path = f"inference.adapters[{i}]"
        source = adapter.source
        if source is not None:
            problems += _adapter_name_problems(f"{path}.source.name", source.name, seen, i)
            problems += data_source_problems(f"{path}.source", source, allowed_networks=(), for_adapter=True)
        try:
            parse_strength(adapter.strength)
        except StrengthError:
            problems.append(
                Problem(
                    f"{path}.strength",
                    'must be a number from "0.0" to "1.0", written as a string',
                    adapter.strength,
                )
            )
    return problems


# KAITO's annotations that change what a Workspace does here: the node image family of a provisioned
# node (passed on to the NodeClaim), and KAITO's inference runtime (vllm unless it says transformers).
NODE_IMAGE_FAMILIES = ("ubuntu", "azurelinux")
RUNTIME_ANNOTATION = f"{GROUP}/runtime"


def _annotation_problems(obj: Mapping[str, Any], ws: Workspace) -> list[Problem]:
    """KAITO's node-image-family values; and a warning where KAITO would refuse the YAML that this
    controller serves: adapter strengths under KAITO's default vLLM runtime (here strengths are merged
    into the weights, whatever the runtime)."""
    annotations = ws.metadata.get("annotations") or {}
    problems: list[Problem] = []
    family = annotations.get(NODE_IMAGE_FAMILY_ANNOTATION)
    if family is not None and str(family).lower() not in NODE_IMAGE_FAMILIES:
        problems.append(
            Problem(
                f"metadata.annotations[{NODE_IMAGE_FAMILY_ANNOTATION}]",
                f"must be one of {', '.join(NODE_IMAGE_FAMILIES)}",
                family,
                "or remove it for the node class's default image",
            )
        )
    adapters = (obj.get("inference") or {}).get("adapters") if ws.inference else None
    strengths = [i for i, a in enumerate(adapters or ()) if isinstance(a, Mapping) and "strength" in a]
    runtime = str(annotations.get(RUNTIME_ANNOTATION) or "vllm").lower()
    if strengths and runtime != "transformers":
        problems.append(
            Problem(
                f"inference.adapters[{strengths[0]}].strength",
                "is served here (strengths are merged into the weights), but KAITO's vLLM runtime, its "
                "default, refuses adapter strengths",
                runtime,
                f"to apply this YAML to KAITO too, annotate it {RUNTIME_ANNOTATION}: transformers",
                Severity.WARNING,
            )
        )
    return problems


def _adapter_name_problems(path: str, name: str, seen: dict[str, int], index: int) -> list[Problem]:
    if not name:
        return [Problem(path, "is required", None, "name the adapter (DNS-1123 label)")]
    problems = name_problems(path, name, what="adapter")
    if name in seen:
        problems.append(
            Problem(
                path,
                f"duplicates inference.adapters[{seen[name]}].source.name",
                name,
                "adapter names must be unique",
            )
        )
    seen.setdefault(name, index)
    return problems


def immutability_problems(new: Workspace, old: Workspace) -> list[Problem]:
    """KAITO's update rules: what a running Workspace cannot change."""
    problems = []

    def changed(path: str, before: Any, after: Any, what: str) -> None:
        if before != after:
            problems.append(
                Problem(path, f"cannot be changed ({what})", to_dict(after), "create a new Workspace instead")
            )

    if (old.tuning is None) != (new.tuning is None) or (old.inference is None) != (new.inference is None):
        problems.append(
            Problem(
                "tuning" if (old.tuning is None) != (new.tuning is None) else "inference",
                "inference and tuning cannot be switched on or off by an update",
                None,
                "delete the Workspace and create a new one",
            )
        )
    if old.resource is not None and new.resource is not None:
        changed(
            "resource.instanceType",
            old.resource.instance_type,
            new.resource.instance_type,
            "nodes are provisioned for it",
        )
        changed(
            "resource.labelSelector",
            old.resource.label_selector,
            new.resource.label_selector,
            "nodes were chosen by it",
        )
    if old.tuning is not None and new.tuning is not None:
        changed("tuning.preset", old.tuning.preset, new.tuning.preset, "the job tunes this model")
        changed(
            "tuning.method",
            Method.parse(old.tuning.method) or old.tuning.method,
            Method.parse(new.tuning.method) or new.tuning.method,
            "the job tunes with this method",
        )
        before_in, after_in = old.tuning.input, new.tuning.input
        if before_in is not None and after_in is not None:
            before_in = to_dict(before_in) | {"urls": sorted(before_in.urls)}
            after_in = to_dict(after_in) | {"urls": sorted(after_in.urls)}
        changed("tuning.input", before_in, after_in, "the job trains on this data")
        changed("tuning.output", old.tuning.output, new.tuning.output, "the adapter goes there")
    if old.inference is not None and new.inference is not None:
        changed("inference.preset", old.inference.preset, new.inference.preset, "the server runs this model")
        if (old.inference.template is None) != (new.inference.template is None):
            problems.append(
                Problem(
                    "inference.template",
                    "cannot be set or unset by an update",
                    None,
                    "create a new Workspace",
                )
            )
    return problems


def _identity_problems(obj: Mapping[str, Any], ws: Workspace) -> list[Problem]:
    """apiVersion, kind, and the names the API server will need."""
    problems: list[Problem] = []
    if obj.get("apiVersion") not in API_VERSIONS:
        problems.append(
            Problem("apiVersion", f"must be one of {', '.join(API_VERSIONS)}", obj.get("apiVersion"))
        )
    if obj.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}", obj.get("kind")))
    name = ws.metadata.get("name")
    if isinstance(name, str) and name:
        problems += name_problems("metadata.name", name, what="Workspace")
    elif not ws.metadata.get("generateName"):
        problems.append(Problem("metadata.name", "is required", None, "name the Workspace (DNS-1123 label)"))
    namespace = ws.metadata.get("namespace")
    if isinstance(namespace, str) and namespace:
        problems += name_problems("metadata.namespace", namespace, what="namespace")
    return problems


def validate_workspace(
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    *,
    allowed_url_networks: Sequence[str] = (),
    training_config: Mapping[str, Any] | TrainingConfig | None = None,
    model_registry: str = "",
) -> list[Problem]:
    """Every problem (errors and warnings) of a Workspace object; ``old`` adds the update rules.

    ``training_config`` is the parsed ``training_config.yaml`` of the ConfigMap named by tuning.config
    when the caller has it, or the config the controller chose (``choose_training_config``); without a
    tuning.config, KAITO's template for the method is checked.
    ``allowed_url_networks`` are the networks the cluster admin allows input URL hosts in despite the
    SSRF policy (the controller's KAITO_TUNE_ALLOWED_URL_NETWORKS; in-cluster or air-gapped data servers,
    local development); never taken from the Workspace. ``model_registry`` is the cluster's mirror of
    the presets' weights (KAITO_TUNE_MODEL_REGISTRY): with one, a modelAccessSecret is refused.
    """
    if not isinstance(obj, Mapping):
        return [Problem("<root>", "a Workspace must be a mapping", obj)]
    ws, shape = parse_workspace(obj)
    problems = _identity_problems(obj, ws) + shape
    if (ws.inference is None) == (ws.tuning is None):
        problems.append(
            Problem(
                "inference",
                "set exactly one of inference or tuning",
                None,
                "a Workspace either serves a model or tunes one",
            )
        )
    sku, found = _resource_problems(ws.resource, ws)
    problems += found
    if ws.tuning is not None:
        problems += _tuning_problems(
            ws.tuning,
            sku,
            allowed_networks=allowed_url_networks,
            training_config=training_config,
            model_registry=model_registry,
        )
    if ws.inference is not None:
        problems += _inference_problems(ws.inference, sku, model_registry)
    problems += _annotation_problems(obj, ws)
    if old is not None and isinstance(old, Mapping):
        old_ws, _ = parse_workspace(old)
        problems += immutability_problems(ws, old_ws)
    return problems
