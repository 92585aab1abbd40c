"""Reconcile again when no event will come: one thread, a heap of deadlines, a few workers.

kopf's timers did this before, but kopf guards a timer with a finalizer on the Workspace: two more
writes per Workspace (one of them a conflict with the status write), and deleting a Workspace then
waited for the controller. When a key is due depends on its phase
(``tuning_reconcile.resync_after``).

    resync = Resync(due=lambda key: ..., workers=4)
    resync.start()
    resync.arm("ns/ws", 60)                   # due in 60 s; arming again postpones
    resync.arm("ns/ws", 30, postpone=False)   # due in 30 s unless due sooner already
    resync.cancel("ns/ws")
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("kaito-tune.resync")


class Resync:
    """Calls ``due(key)`` (on one of ``workers`` threads) once a key's deadline passed; each ``arm``
    sets one deadline, so a key is called once per arming."""

    def __init__(
        self, due: Callable[[str], None], workers: int = 4, clock: Callable[[], float] = time.monotonic
    ):
        self._due = due
        self._clock = clock
        self._workers = workers
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def arm(self, key: str, delay: float, *, postpone: bool = True) -> None:
        """``key`` is due in ``delay`` seconds; without ``postpone`` an earlier deadline stays."""
        with self._wake:
            deadline = self._clock() + delay
            current = self._deadlines.get(key)
            if current is not None and not postpone and current <= deadline:
                return
            self._deadlines[key] = deadline
            heapq.heappush(self._heap, (deadline, key))
            self._wake.notify()

    def cancel(self, key: str) -> None:
        with self._wake:
            self._deadlines.pop(key, None)  # its heap entries are skipped when they come up

    def armed(self, key: str) -> float | None:
        """Seconds until ``key`` is due (None when it is not armed)."""
        with self._wake:
            deadline = self._deadlines.get(key)
            return None if deadline is None else deadline - self._clock()

    def start(self) -> None:
        self._stopping = False
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="resync")
        self._thread = threading.Thread(target=self._run, name="resync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _next_due(self) -> str | None:
        """The next key whose deadline passed, waiting for it; None when stopping."""
        with self._wake:
            while not self._stopping:
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, key = self._heap[0]
                if self._deadlines.get(key) != deadline:  # cancelled or armed again
                    heapq.heappop(self._heap)
                    continue
                wait = deadline - self._clock()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._deadlines[key]
                return key
        return None

    def _run(self) -> None:
        while (key := self._next_due()) is not None:
            assert self._pool is not None
            self._pool.submit(self._call, key)

    def _call(self, key: str) -> None:
        try:
            self._due(key)
        except Exception:  # one Workspace's failure must not stop the others' resyncs
            log.exception("resync of %s failed", key)
