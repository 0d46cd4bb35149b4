"""The live view of a running benchmark grid on stderr: a tqdm bar on a terminal, plain
progress lines otherwise, each with the grid's counts and its ETA (`GridView`). The runner
(`medbench.workflows.benchmark`) feeds it the store's counts and each run's news.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from medbench.training.config import format_seconds

Clock = Callable[[], float]


class GridView:
    """Live state of the grid on stderr: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(
        self, total: int, *, enabled: bool = True, stream=None, clock: Clock = time.monotonic
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.clock = clock
        self.cell_seconds: list[float] = []
        self.deadline: float | None = None  # clock time, when a total budget applies
        self._bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            self._bar = tqdm(
                total=total,
                desc="benchmark",
                unit="run",
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )

    def _eta_seconds(self, counts: dict[str, int]) -> float | None:
        left = counts["pending"] + counts["running"]
        if left == 0:
            return 0.0
        if self.deadline is not None:
            return max(0.0, self.deadline - self.clock())
        if not self.cell_seconds:
            return None
        workers = max(1, counts["running"])
        return sum(self.cell_seconds) / len(self.cell_seconds) * math.ceil(left / workers)

    def status(self, counts: dict[str, int]) -> str:
        done = counts["finished"] + counts["failed"]
        eta = self._eta_seconds(counts)
        text = (
            f"{done}/{self.total} done ({counts['failed']} failed), {counts['running']} running, "
            f"{counts['pending']} left"
        )
        return text + (f", ETA {format_seconds(eta)}" if eta is not None else "")

    def update(self, counts: dict[str, int], event: str | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = counts["finished"] + counts["failed"]
            self._bar.set_postfix_str(self.status(counts).split(", ", 1)[1], refresh=False)
            if event:
                self._bar.write(event, file=self.stream)
            self._bar.refresh()
        else:
            line = f"[benchmark] {self.status(counts)}" + (f": {event}" if event else "")
            print(line, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line under the bar (per-round news) that does not change the counts."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
