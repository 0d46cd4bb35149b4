"""Model selection: which round's weights a run keeps, and early stopping.

After each round's validation the selector keeps a copy of the weights when the round is
the best so far on the selection metric (validation AUC by default; ACC where AUC is
undefined, e.g. one class in the validation sample; `loss`: the lowest validation loss, the
rule MedMNIST+ trains by). `last` keeps the final weights whatever validation says. With
`patience`, a run stops when that many rounds have passed without a better one.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn


class Selector:
    def __init__(
        self,
        metric: str,
        patience: int | None = None,
        best: dict[str, Any] | None = None,
        best_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.metric = metric
        self.patience = patience
        self.best = best or {"score": -math.inf, "round": 0, "step": 0}
        self.best_state = best_state  # None: the final weights are the selected ones

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_state": self.best_state}

    def score(self, record: dict[str, Any]) -> float:
        """The round's score, higher is better (the loss enters negated)."""
        if self.metric == "loss":
            loss = float(record["val_loss"])
            return -loss if math.isfinite(loss) else -math.inf
        value = float(record["val_auc" if self.metric == "last" else f"val_{self.metric}"])
        return value if math.isfinite(value) else float(record["val_acc"])

    def consider(self, record: dict[str, Any], model: nn.Module) -> bool:
        """Take a round's record and the model it scored; True when its weights are now the
        selected ones."""
        score = self.score(record)
        best = {"score": score, "round": record["round"], "step": record["step"]}
        if self.metric == "last":  # the model's own weights at the end: nothing to copy
            self.best, self.best_state = best, None
            return True
        if score > self.best["score"]:
            self.best, self.best_state = best, copy.deepcopy(model.state_dict())
            return True
        return False

    def patience_exhausted(self, round_: int) -> bool:
        return bool(self.patience) and round_ - self.best["round"] >= self.patience

    def restore_best(self, model: nn.Module) -> None:
        """Load the selected weights into `model` (a no-op when they are its own)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
