"""The training-config ConfigMap that a tuning Job mounts: the user's config, or KAITO's template.

The controller writes its own copy, owned by the Workspace, rather than mounting the user's ConfigMap:
the Job then trains with exactly the options that were validated, even if the user's ConfigMap is
edited or deleted while the Job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from contract.pod import CONFIG_KEY
from contract.training_config import Method, default_training_config
from contract.workspace import GROUP, Workspace
from tuning_controller.render.meta import metadata

SOURCE_ANNOTATION = f"{GROUP}/training-config-source"


def training_configmap_name(ws: Workspace) -> str:
    return f"{ws.name}-training-config"


def render_training_configmap(ws: Workspace, user_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ConfigMap holding ``training_config.yaml`` for a tuning Workspace.

    ``user_config`` is the parsed training config of the ConfigMap named by ``tuning.config``; without
    it the method's default template is used, as KAITO does.
    """
    if ws.tuning is None:
        raise ValueError(f"Workspace {ws.name!r} has no tuning section")
    method = Method.require(ws.tuning.method)
    if user_config is not None:
        doc, source = dict(user_config), f"configmap/{ws.tuning.config}"
    else:
        doc, source = default_training_config(method), f"{method}-params-template"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ws, training_configmap_name(ws), "training-config", {SOURCE_ANNOTATION: source}),
        "data": {CONFIG_KEY: yaml.safe_dump(doc, sort_keys=False)},
    }
