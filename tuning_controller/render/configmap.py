"""The training-config ConfigMap that a tuning Job mounts: the user's config, or KAITO's template.

The controller writes its own copy, owned by the Workspace, rather than mounting the user's ConfigMap:
the Job then trains with exactly the options that were validated, even if the user's ConfigMap is
edited or deleted while the Job runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from contract.pod import CONFIG_KEY
from contract.training_config import Method, default_training_config
from contract.workspace import GROUP, TuningSpec, Workspace
from tuning_controller.render.meta import metadata

SOURCE_ANNOTATION = f"{GROUP}/training-config-source"
# libyaml's emitter where PyYAML has it: the pure-Python one was an eighth of the controller's CPU
# under a burst of new Workspaces.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class TrainingConfig:
    """The training config a tuning Workspace trains with, chosen once per reconcile: the parsed
    ``training_config.yaml`` of the ConfigMap that ``tuning.config`` names, or the method's template."""

    doc: Mapping[str, Any]
    source: str  # "configmap/<name>" or "<method>-params-template": the ConfigMap's annotation
    method: Method
    from_user: bool

    @property
    def text(self) -> str:
        """The YAML the Job mounts (a template's is dumped once per process)."""
        return _dump(self.doc) if self.from_user else _template_text(self.method)


def choose_training_config(
    tuning: TuningSpec, user_config: Mapping[str, Any] | None
) -> TrainingConfig | None:
    """The user's config when given, else the method's template when tuning.config names none; None
    when tuning.config names a ConfigMap the caller has not read. ValueError for an unknown method."""
    method = Method.require(tuning.method)
    if user_config is not None:
        return TrainingConfig(dict(user_config), f"configmap/{tuning.config or 'training'}", method, True)
    if tuning.config:
        return None
    return TrainingConfig(default_training_config(method), f"{method}-params-template", method, False)


def _dump(doc: Mapping[str, Any]) -> str:
    return yaml.dump(dict(doc), Dumper=_DUMPER, sort_keys=False)


@functools.cache
def _template_text(method: Method) -> str:
    return _dump(default_training_config(method))


def training_configmap_name(ws: Workspace) -> str:
    return f"{ws.name}-training-config"


def render_training_configmap(ws: Workspace, config: TrainingConfig) -> dict[str, Any]:
    """The ConfigMap holding ``training_config.yaml`` for a tuning Workspace (``config``: see
    ``choose_training_config``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            ws, training_configmap_name(ws), "training-config", {SOURCE_ANNOTATION: config.source}
        ),
        "data": {CONFIG_KEY: config.text},
    }
