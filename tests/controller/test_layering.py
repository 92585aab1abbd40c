"""The functional core stays free of kopf and the Kubernetes client: only handlers, kube and operator
may import them (the renderers must run in `kaito-tune render` and in unit tests without a cluster)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.controller.conftest import REPO_ROOT

CORE = [
    "tuning_controller.conditions",
    "tuning_controller.plan",
    "tuning_controller.tuning_reconcile",
    "tuning_controller.inference_reconcile",
    "tuning_controller.inference_status",
    "tuning_controller.resync",
    "tuning_controller.status",
    "tuning_controller.nodes",
    "tuning_controller.settings",
    "tuning_controller.render",
    "tuning_controller.render.job",
    "tuning_controller.render.rbac",
    "tuning_controller.render.nodeclaim",
    "tuning_controller.render.configmap",
    "tuning_controller.render.meta",
    "tuning_controller.render.pod",
    "tuning_controller.render.inference",
]


def test_core_modules_import_neither_kopf_nor_kubernetes():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
