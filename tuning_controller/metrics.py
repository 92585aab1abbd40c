"""Prometheus metrics of the controller, served on settings.metrics_port (``/metrics``).

kaito_tune_reconciles_total{kind, result}        result: ok | waiting | invalid | error
kaito_tune_reconcile_errors_total{kind, error}   error: the exception class (API errors by HTTP code)
kaito_tune_reconcile_duration_seconds{kind}      histogram
kaito_tune_workspaces{kind, state}               gauge: Workspaces by status.state, as last reconciled
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("kaito_tune_reconciles_total", "Workspace reconciles by outcome", ["kind", "result"])
ERRORS = Counter("kaito_tune_reconcile_errors_total", "Reconcile errors by cause", ["kind", "error"])
DURATION = Histogram(
    "kaito_tune_reconcile_duration_seconds",
    "Time of one reconcile",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WORKSPACES = Gauge("kaito_tune_workspaces", "Workspaces by state", ["kind", "state"])

_states: dict[tuple[str, str], str] = {}  # (kind, namespace/name) -> state
_lock = threading.Lock()


@contextmanager
def reconciling(kind: str) -> Iterator[dict[str, str]]:
    """Times a reconcile and counts its result; the body sets ``outcome["result"]`` (default ok)."""
    outcome = {"result": "ok"}
    start = time.perf_counter()
    try:
        yield outcome
    except Exception as exc:
        status = getattr(exc, "status", None)
        ERRORS.labels(kind, f"HTTP {status}" if status else type(exc).__name__).inc()
        outcome["result"] = outcome["result"] if outcome["result"] != "ok" else "error"
        raise
    finally:
        DURATION.labels(kind).observe(time.perf_counter() - start)
        RECONCILES.labels(kind, outcome["result"]).inc()


def set_state(kind: str, key: str, state: str | None) -> None:
    """Record a Workspace's state (None when deleted) and refresh the gauge."""
    with _lock:
        if state is None:
            _states.pop((kind, key), None)
        else:
            _states[(kind, key)] = state
        counts: dict[str, int] = {}
        for (k, _), s in _states.items():
            if k == kind:
                counts[s] = counts.get(s, 0) + 1
        for labels in list(WORKSPACES._metrics):  # states that dropped to zero
            if labels[0] == kind and labels[1] not in counts:
                WORKSPACES.labels(*labels).set(0)
        for s, n in counts.items():
            WORKSPACES.labels(kind, s).set(n)


def serve(port: int) -> None:
    start_http_server(port)
