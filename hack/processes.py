"""Child processes of the local stack: a free port, waiting for a condition, stopping by PID."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # prctl(2)


class StackError(RuntimeError):
    """A part of the local stack could not start; the message says which and what to do."""


def die_with_parent() -> None:
    """A ``preexec_fn``: the child gets SIGTERM when the process that started it ends (Linux prctl), so a
    test killed hard leaves no server behind (``timeout`` passes the signal on to what it runs)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop one child by its PID: `sig`, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(
    command: list[str],
    cwd: Path,
    log: Path,
    max_seconds: int,
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    interval: float = 0.2,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """``command`` as a test server: under coreutils' ``timeout`` (a lifetime cap), in a session of its own,
    dying with its parent, its output appended to ``log``; returns once ``ready()``. It exiting first
    raises StackError with the log's tail; on any failure it is stopped by its PID. ``env``: its whole
    environment (default: this process's)."""
    process = subprocess.Popen(
        ["timeout", "--kill-after=10", str(max_seconds), *command],
        cwd=cwd,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )

    def up() -> bool:
        if process.poll() is not None:
            raise StackError(f"{what} exited ({process.returncode}): {log.read_text()[-2000:]}")
        return ready()

    try:
        wait_for(up, timeout, what, interval=interval)
    except BaseException:
        stop_process(process, timeout=10)
        raise
    return process
