"""The controller process: kopf with the tuning (and, when present, inference) handlers.

    KUBECONFIG=... python -m tuning_controller.operator            # all namespaces
    python -m tuning_controller.operator --namespace team-a        # one namespace
    curl localhost:8081/healthz ; curl localhost:8080/metrics

Settings come from ``KAITO_TUNE_*`` variables (tuning_controller.settings), read once here and handed to
the handlers. Logs are JSON lines on stderr (one object per record: time, level, logger, message, and
the object kopf was handling).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import kopf

from contract.workspace import GROUP
from tuning_controller import metrics
from tuning_controller.handlers import runtime
from tuning_controller.kube import Kube, KubeError
from tuning_controller.render.jobset import JOBSET_API_VERSION
from tuning_controller.settings import PREFIX, Settings, SettingsError, settings_from_env

HANDLER_MODULES = ("tuning_controller.handlers.tuning", "tuning_controller.handlers.inference")
log = logging.getLogger("kaito-tune")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; kopf's per-object logger adds the object as ``k8s_ref``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if ref:
            entry["object"] = {k: ref.get(k) for k in ("kind", "namespace", "name") if ref.get(k)}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve_multi_node_workload(ours: Settings, kube: Kube) -> Settings:
    """multi_node_workload made concrete at start: auto is jobset when the API server serves JobSets,
    else job. jobset asked for where none are served stops the controller: its multi-node Workspaces
    would wait for ever."""
    if ours.multi_node_workload == "job":
        return ours
    try:
        found = kube.request("GET", f"/apis/{JOBSET_API_VERSION}")
        served = any(r.get("name") == "jobsets" for r in found.get("resources") or [])
    except KubeError as err:
        if not err.not_found:
            raise
        served = False
    if ours.multi_node_workload == "jobset" and not served:
        raise SettingsError(
            f"{PREFIX}MULTI_NODE_WORKLOAD=jobset: the API server serves no JobSets ({JOBSET_API_VERSION}); "
            "install JobSet's controller, or use auto or job"
        )
    return replace(ours, multi_node_workload="jobset" if served else "job")


def load_handlers(ours: Settings) -> None:
    """Import the handler modules (importing registers their kopf handlers), then register those whose
    registration depends on the settings, and hand the settings to the handlers."""
    runtime.use(ours)
    for name in HANDLER_MODULES:
        importlib.import_module(name).register(ours)


class WorkspaceDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base, built for Workspaces only. kopf builds it (a deep copy of the object) for
    every event of every watched kind, pods and Jobs included, though only the Workspaces' delete
    handlers (auto-provisioning) use it: under a burst of new Workspaces that copy was a fifth of the
    controller's CPU. Likewise kopf looks for a stored one on every event: only a Workspace has one."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        if body.get("kind") != "Workspace":
            nothing: kopf.BodyEssence = {}
            return nothing
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """Nothing is stored on other kinds, so their annotations are not searched (kopf forms the
        storage keys anew for every event)."""
        return super().fetch(body=body) if body.get("kind") == "Workspace" else None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = runtime.settings()
    # Workspaces are followed by event handlers that keep what they handled in memory (handlers.runtime
    # .Handled), so kopf stores nothing on them. Only the delete handlers of auto-provisioning make kopf
    # keep a finalizer and its state: then in annotations under our own prefix, not in
    # kopf.zalando.org, visible with the object, and no status field of KAITO's API is taken.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = WorkspaceDiffBase(prefix=GROUP, key="last-handled-configuration")
    # Events for people come from the handlers (milestones, failures); kopf's own log lines become
    # Events only from WARNING up, so a Workspace's event list stays readable.
    settings.posting.level = logging.WARNING
    # Ask the API server to end watches every 5 minutes and give up on a silent connection a bit
    # later: a dropped connection is noticed in minutes, not hours.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Server-side filtering: only our Jobs, pods and NodeClaims reach the controller, so a busy
    # cluster's pods cost nothing.
    managed = f"app.kubernetes.io/managed-by=kaito-tune,{GROUP}/workspace"
    group, version = JOBSET_API_VERSION.split("/")
    watched = (("batch", "v1", "jobs"), ("", "v1", "pods"), ("karpenter.sh", "v1", "nodeclaims"))
    for resource in (*watched, (group, version, "jobsets")):
        settings.watching.label_selectors[resource] = managed
    # Synchronous handlers run in a thread pool: different Workspaces reconcile in parallel (200
    # applied at once must not queue behind each other); one Workspace is serialised by a lock.
    settings.execution.max_workers = ours.max_workers
    # A failed delete handler is retried after as long as a failed reconcile.
    settings.execution.default_backoff = runtime.RETRY_SECONDS
    # No peering objects: one replica runs (the chart's Deployment), and no extra CRD is needed.
    settings.peering.standalone = True
    metrics.serve(ours.metrics_port)
    runtime.warm_up()
    log.info("settings: %s", json.dumps({k: v for k, v in vars(ours).items()}, default=str))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning_controller.operator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--namespace", action="append", default=[], help="watch only these (default: all)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        ours = settings_from_env(os.environ)
        ours = resolve_multi_node_workload(ours, Kube.from_environment(os.environ.get("KUBECONFIG") or None))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_handlers(ours)
    log.info("handlers: %s", ", ".join(HANDLER_MODULES))
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{ours.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
