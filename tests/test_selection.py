"""Model selection: which round's weights a run keeps."""

import math

import torch
from torch import nn

from medbench.training.selection import Selector


def record(round_, loss, auc, acc=0.5):
    return {"round": round_, "step": 10 * round_, "val_loss": loss, "val_auc": auc, "val_acc": acc}


def model_with(value):
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_loss_selection_keeps_the_round_with_the_lowest_validation_loss():
    # AUC and loss disagree on purpose: AUC peaks in round 3, the loss in round 2.
    rounds = [record(1, 0.70, 0.80), record(2, 0.40, 0.85), record(3, 0.55, 0.95)]
    by_loss, by_auc = Selector("loss"), Selector("auc")
    for r in rounds:
        by_loss.consider(r, model_with(r["round"]))
        by_auc.consider(r, model_with(r["round"]))
    assert by_loss.best["round"] == 2 and by_auc.best["round"] == 3
    kept = model_with(0.0)
    by_loss.restore_best(kept)
    assert kept.weight.item() == 2.0


def test_loss_patience_counts_rounds_since_the_lowest_loss():
    sel = Selector("loss", patience=2)
    for r in [record(1, 0.5, 0.9), record(2, 0.6, 0.9), record(3, 0.7, 0.99)]:
        sel.consider(r, model_with(1.0))
    assert sel.patience_exhausted(3) and not sel.patience_exhausted(2)


def test_a_non_finite_loss_never_wins():
    sel = Selector("loss")
    sel.consider(record(1, 0.9, 0.5), model_with(1.0))
    assert not sel.consider(record(2, math.nan, 0.99), model_with(2.0))
    assert sel.best["round"] == 1
