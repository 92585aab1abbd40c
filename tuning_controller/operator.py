"""The controller process: kopf with the tuning (and, when present, inference) handlers.

    KUBECONFIG=... python -m tuning_controller.operator            # all namespaces
    python -m tuning_controller.operator --namespace team-a        # one namespace
    curl localhost:8081/healthz ; curl localhost:8080/metrics

Settings come from ``KAITO_TUNE_*`` variables (tuning_controller.settings). Logs are JSON lines on
stderr (one object per record: time, level, logger, message, and the object kopf was handling).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

import kopf

from contract.workspace import GROUP
from tuning_controller import metrics
from tuning_controller.settings import SettingsError, settings_from_env

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


def load_handlers() -> None:
    """Import the handler modules: importing registers their kopf handlers. Called after the settings
    check, because a handler decorator reads the settings."""
    for name in HANDLER_MODULES:
        importlib.import_module(name)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = settings_from_env(os.environ)
    # Handler progress and the last-handled spec live in annotations under our own prefix, not in
    # kopf.zalando.org: visible with the object, and no status field of KAITO's API is taken.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
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
    for resource in (("batch", "v1", "jobs"), ("", "v1", "pods"), ("karpenter.sh", "v1", "nodeclaims")):
        settings.watching.label_selectors[resource] = managed
    # Synchronous handlers run in a thread pool: different Workspaces reconcile in parallel (200
    # applied at once must not queue behind each other); one Workspace is serialised by a lock.
    settings.execution.max_workers = ours.max_workers
    # Errors of a handler are retried with this delay unless it says otherwise.
    settings.execution.default_backoff = 10
    # A timer (a Workspace waiting for nodes) running in a thread cannot be cancelled; when its
    # Workspace is deleted, kopf looks again this often (default 60 s) before removing the finalizer.
    settings.background.cancellation_polling = 1
    # No peering objects: one replica runs (the chart's Deployment), and no extra CRD is needed.
    settings.peering.standalone = True
    metrics.serve(ours.metrics_port)
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
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_handlers()
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
