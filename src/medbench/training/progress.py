"""What a training run prints: a tqdm bar on a terminal, one line per round otherwise.

A `medbench.training.callbacks.Callback` like any other, so the engine knows nothing of terminals.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from tqdm.auto import tqdm

from medbench.training.callbacks import Callback, RoundEnd, RunInfo

if TYPE_CHECKING:  # annotations only
    from medbench.runs.results import RunResults

# A round record's numbers as printed: (key, label, format), in order.
_ROUND_FIELDS = (
    ("train_loss", "loss", ".4f"),
    ("val_acc", "val_acc", ".4f"),
    ("val_auc", "val_auc", ".4f"),
    ("lr", "lr", ".2e"),
)


def round_line(label: str, record: dict[str, Any], rounds_planned: int | None = None) -> str:
    """The one line a finished round prints, in `train` and in a grid alike."""
    of = f"/{rounds_planned}" if rounds_planned else ""
    epochs = f" ({record['epochs']:.2f} epochs)" if record.get("epochs") is not None else ""
    numbers = [
        f"{name} {record[key]:{fmt}}"
        for key, name, fmt in _ROUND_FIELDS
        if isinstance(record.get(key), int | float)
    ]
    if isinstance(record.get("seconds"), int | float):
        numbers.append(f"{record['seconds']:.1f}s")
    if isinstance(record.get("train_images_per_second"), int | float):
        numbers.append(f"{record['train_images_per_second']:.0f} img/s")
    return f"{label} round {record.get('round')}{of}{epochs}: {' '.join(numbers)}"


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
                desc=c.label,
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
        line = round_line(event.run.config.label, event.record, event.rounds_planned)
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, results: RunResults) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
