"""Pure renderers: a Workspace (plus what the controller read) in, the Kubernetes objects to apply out.

No Kubernetes client and no kopf here, so every object the controller would create can be printed by
``kaito-tune render`` and compared with expected objects in unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.workspace import Workspace
from tuning_controller.settings import Settings

PENDING_DATA_SHA = "set-by-the-data-check"


def sku_gpus(ws: Workspace) -> int:
    """GPUs per node of the Workspace's instanceType (1 when unknown: own nodes report their own)."""
    from presets.catalog import UnknownName, get_sku

    if ws.resource is None or not ws.resource.instance_type:
        return 1
    try:
        return get_sku(ws.resource.instance_type).gpu_count
    except UnknownName:
        return 1


def node_count(ws: Workspace) -> int:
    """Nodes of the Workspace (resource.count): a tuning Job's pods or an inference StatefulSet's, one
    per node."""
    return max(1, ws.resource.count if ws.resource else 1)


def render_workspace_objects(
    ws: Workspace,
    settings: Settings,
    user_config: Mapping[str, Any] | None = None,
    *,
    data_sha256: str = PENDING_DATA_SHA,
    gpus: int | None = None,
) -> list[dict[str, Any]]:
    """Every object the controller creates for a Workspace, tuning or inference, in creation order.

    ``gpus`` per pod defaults to the instanceType's (own nodes report theirs at run time). A tuning Job's
    data sha256 comes from the pre-flight at run time; without it a placeholder shows.
    """
    from tuning_controller.render.configmap import choose_training_config, render_training_configmap
    from tuning_controller.render.inference import render_inference_objects
    from tuning_controller.render.input_urls import render_urls_secret
    from tuning_controller.render.job import (
        needs_push_job,
        render_data_job,
        render_push_job,
        render_rendezvous_service,
        render_results_claim,
        render_training_job,
        revision,
        uses_jobset,
        uses_results_claim,
    )
    from tuning_controller.render.nodeclaim import provisions_node, render_nodeclaim
    from tuning_controller.render.rbac import render_progress_rbac

    gpus = gpus if gpus else sku_gpus(ws)
    provisions = provisions_node(ws, settings)
    if ws.tuning is None:
        nodeclaims = [render_nodeclaim(ws, settings, i) for i in range(node_count(ws))] if provisions else []
        return [*nodeclaims, *render_inference_objects(ws, settings, gpus=gpus)]
    config = choose_training_config(ws.tuning, user_config)
    if config is None:
        raise ValueError(
            f"tuning.config names ConfigMap {ws.tuning.config!r}, which was not given: the Job's training "
            "config is rendered from it"
        )
    rev = revision(ws, config.doc)
    secret = render_urls_secret(ws, rev)
    objects = [render_training_configmap(ws, config), *([secret] if secret else [])]
    objects.append(render_data_job(ws, settings, rev))
    if provisions:
        objects += [render_nodeclaim(ws, settings, i) for i in range(node_count(ws))]
    objects += render_progress_rbac(ws)
    if node_count(ws) > 1 and not uses_jobset(ws, settings):  # JobSet's controller makes its own
        objects.append(render_rendezvous_service(ws))
    if uses_results_claim(ws, settings):
        objects.append(render_results_claim(ws, settings))
    objects.append(render_training_job(ws, settings, rev, data_sha256=data_sha256, gpus=gpus))
    if needs_push_job(ws):
        objects.append(render_push_job(ws, settings, rev))
    return objects
