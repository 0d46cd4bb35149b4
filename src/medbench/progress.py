"""What a training run prints: a tqdm bar on a terminal, one line per round otherwise.

A `medbench.callbacks.Callback` like any other, so the engine knows nothing of terminals.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

from medbench.callbacks import Callback, RoundEnd, RunInfo


def round_line(event: RoundEnd) -> str:
    r, c = event.record, event.run.config
    return (
        f"[{c.dataset}/{c.model}/seed {c.seed}] epoch {r['round']}/{event.rounds_planned} "
        f"loss {r['train_loss']:.4f} val_acc {r['val_acc']:.4f} val_auc {r['val_auc']:.4f} "
        f"lr {r['lr']:.2e} {r['seconds']:.1f}s {r['train_images_per_second']:.0f} img/s"
    )


class ProgressBar(Callback):
    """`tty=None` asks whether `stream` is a terminal."""

    def __init__(self, tty: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar: Any = None

    def on_train_start(self, run: RunInfo) -> None:
        if self.tty:
            c = run.config
            self.bar = tqdm(
                total=run.total_steps,
                initial=run.start_step if run.total_steps else 0,
                desc=f"{c.dataset}/{c.model}/s{c.seed}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
                file=self.stream,
            )

    def on_step(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_plan(self, total_steps: int) -> None:
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.refresh()

    def on_round_end(self, event: RoundEnd) -> None:
        line = round_line(event)
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, results: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
