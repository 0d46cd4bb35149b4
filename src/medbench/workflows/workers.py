"""Several worker processes on one machine, each with its share of the CPU cores.

Training processes that each take every core thrash (their threads spin against each
other and every step slows down many times over), so each of N workers sets torch's
intra-op threads to cores // N before it does any work. On a GPU the N processes share
the device (worthwhile for small images, where one process leaves most of it idle).

Workers are started with `spawn` (a fresh interpreter: no copy of the parent's threads,
CUDA state or open database connections), so the target and its payload must be
picklable: a module-level function and plain data.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from medbench.errors import MedbenchError

Target = Callable[[int, Any], None]


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of `workers` processes sharing `cores` (at least one)."""
    return max(1, (cores or available_cores()) // workers)


def check_workers(workers: int) -> None:
    if workers < 1:
        raise MedbenchError(f"--workers must be at least 1, not {workers}")


@dataclass(frozen=True)
class WorkerExit:
    """How one worker ended: its exit code (negative: killed by that signal)."""

    index: int
    pid: int | None
    exitcode: int | None

    @property
    def ok(self) -> bool:
        return self.exitcode == 0

    def describe(self) -> str:
        code = self.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"worker {self.index} (pid {self.pid}): {how}"


def run_workers(
    target: Target, payload: Any, workers: int, *, threads: int | None = None
) -> list[WorkerExit]:
    """Run `target(index, payload)` in `workers` new processes at once, each with
    `threads` torch threads (default `threads_per_worker`); wait for all of them."""
    check_workers(workers)
    threads = threads or threads_per_worker(workers)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_main, args=(target, payload, i, threads), name=f"medbench-worker-{i}"
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (one process group): let them hand their work back.
        for p in procs:
            p.join(timeout=30)
        raise
    return [WorkerExit(i, p.pid, p.exitcode) for i, p in enumerate(procs)]


def _worker_main(target: Target, payload: Any, index: int, threads: int) -> None:
    torch.set_num_threads(threads)  # before any work: later calls do not resize every pool
    try:
        target(index, payload)
    except MedbenchError as exc:
        print(f"medbench: error: worker {index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
