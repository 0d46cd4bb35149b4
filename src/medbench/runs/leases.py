"""Who works on a piece of shared work, and when that worker is taken as gone.

A benchmark grid's cells are claimed by one process each (`medbench.runs.store`). A claim
names its owner (host and pid) and is kept alive by a heartbeat; it may be taken over
when its owner is gone:

- the heartbeat is older than the stale limit (the one test that works across machines:
  a process on another host cannot be probed), or
- the owner ran on this host and its pid no longer exists (a killed worker is seen at
  once, without waiting for its heartbeat to go stale).

Tune and search studies keep Optuna's own trial heartbeats (`medbench.workflows.study_storage`):
Optuna owns a trial's states (running, failed, re-queued with the same parameters) and a
second claim over its trials would give a trial two owners of record.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STALE_SECONDS = 600.0
DEFAULT_HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class Owner:
    """Who works on a claim: the host name and process id."""

    host: str
    pid: int

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid())

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a killed child nobody has reaped yet is still listed, as state Z.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def abandoned(
    host: str | None, pid: int | None, heartbeat: float | None, now: float, stale_seconds: float
) -> bool:
    """Whether a claim by `host`:`pid` whose last heartbeat was at `heartbeat` (epoch
    seconds) may be taken over at `now`."""
    if heartbeat is None or now - heartbeat > stale_seconds:
        return True
    return host == socket.gethostname() and not process_alive(int(pid or 0))


class Heartbeat:
    """Call `beat` every `every` seconds from a daemon thread for as long as the `with`
    block runs (a training round can take longer than the stale limit)."""

    def __init__(self, beat: Callable[[], object], every: float) -> None:
        self._beat = beat
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            # A busy database must not kill the work; the next beat retries.
            with contextlib.suppress(Exception):
                self._beat()
