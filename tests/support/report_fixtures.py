"""Small result folders for the report tests, written through the results store with real
`medbench.scoring.metrics.evaluate` numbers: each cell says how long it trained, how accurate it is,
whether it collapses onto one class or misses a rare one, or whether it failed or is still
pending. No tests live here."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbench.data import dataset_info
from medbench.runs.results import ModelInfo, RoundRecord, RunResults, Timing
from medbench.runs.store import ResultsStore
from medbench.scoring import metrics
from medbench.training.config import TrainConfig, config_hash
from medbench.utils.fsutil import atomic_write_json

# Test class shares close to the real splits (the last DermaMNIST class, 'vascular', ~1.4%).
SHARES = {
    "dermamnist": [0.033, 0.051, 0.110, 0.011, 0.111, 0.670, 0.014],
    "octmnist": [0.25, 0.25, 0.25, 0.25],
    "breastmnist": [0.27, 0.73],
}
N_TEST = 600
STEPS_PER_EPOCH = 20


@dataclass
class Cell:
    dataset: str
    model: str
    seed: int = 0
    accuracy: float = 0.8  # share of the test images predicted right (before the options)
    collapse: bool = False  # every test image predicted as class 0
    miss: int | None = None  # a class never predicted (its images go to the majority class)
    epochs: int | None = 3  # the length rule: planned epochs...
    time_budget_seconds: float | None = None  # ...or seconds per cell
    epochs_trained: float = 3.0
    train_seconds: float = 60.0
    n_params: int = 1_000_000
    status: str = "finished"  # or "failed", "pending"
    error: str = ""
    pretrained: str | None = None  # the weights it started from, as --pretrained gives them
    finetune: str = "full"


def _labels(dataset: str, rng) -> np.ndarray:
    counts = np.round(np.asarray(SHARES[dataset]) * N_TEST).astype(int)
    y = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(y)
    return y


def _predict(cell: Cell, y: np.ndarray, rng) -> np.ndarray:
    n_classes = len(SHARES[cell.dataset])
    if cell.collapse:
        return np.zeros_like(y)
    right = rng.random(len(y)) < cell.accuracy
    wrong = (y + rng.integers(1, n_classes, size=len(y))) % n_classes
    pred = np.where(right, y, wrong)
    if cell.miss is not None:
        majority = int(np.argmax(SHARES[cell.dataset]))
        pred[pred == cell.miss] = majority
    return pred


def _probs(pred: np.ndarray, n_classes: int, rng) -> np.ndarray:
    noise = rng.dirichlet(np.ones(n_classes), size=len(pred))
    return 0.6 * np.eye(n_classes)[pred] + 0.4 * noise


def _split(
    cell: Cell, rng, names: list[str], *, healthy: bool
) -> tuple[dict, np.ndarray, np.ndarray]:
    info = dataset_info(cell.dataset)
    y = _labels(cell.dataset, rng)
    probe = Cell(**{**cell.__dict__, "collapse": cell.collapse and not healthy})
    probs = _probs(_predict(probe, y, rng), len(SHARES[cell.dataset]), rng)
    return metrics.evaluate(y, probs, info.task, names), y, probs


def _config(cell: Cell, run_dir: Path) -> TrainConfig:
    return TrainConfig(
        dataset=cell.dataset,
        model=cell.model,
        seed=cell.seed,
        epochs=cell.epochs,
        time_budget_seconds=cell.time_budget_seconds,
        run_dir=str(run_dir),
        pretrained=cell.pretrained,
        finetune=cell.finetune,
    )


def _history(cell: Cell, val_acc: float) -> list[RoundRecord]:
    rounds = max(1, round(cell.epochs_trained)) if cell.epochs_trained >= 1 else 1
    out = []
    for k in range(1, rounds + 1):
        epochs = cell.epochs_trained * k / rounds
        out.append(
            RoundRecord(
                k,
                int(epochs * STEPS_PER_EPOCH),
                1.2 / k,
                1.3 / k,
                val_acc * k / rounds,
                0.8,
                1e-3,
                cell.train_seconds / rounds,
                500.0,
                epochs,
            )  # fmt: skip
        )
    return out


def _results(cell: Cell, config: TrainConfig, run_dir: Path) -> RunResults:
    info = dataset_info(cell.dataset)
    rng = np.random.default_rng(zlib.crc32(f"{cell.dataset}|{cell.model}|{cell.seed}".encode()))
    names = list(info.label_names)
    val, _, _ = _split(cell, rng, names, healthy=True)
    test, y, probs = _split(cell, rng, names, healthy=False)
    flags = metrics.collapse_check(val, test, n_classes=info.n_classes, task=info.task)
    np.savez(run_dir / "predictions.npz", test_labels=y[:, None], test_probs=probs,
             test_logits=np.log(probs), val_labels=y[:, None])  # fmt: skip
    return RunResults(
        run_dir=str(run_dir),
        config=config.to_dict(),
        dataset={
            "name": cell.dataset,
            "size": 28,
            "task": info.task,
            "label_names": names,
            "n_classes": info.n_classes,
            "md5_matches": True,
            "official": True,
            "license": info.license,
        },  # fmt: skip
        model=ModelInfo(cell.model, cell.n_params, cell.n_params * 20),
        metrics={"val": val, "test": test, "temperature": 1.0},
        timing=Timing(cell.train_seconds),
        steps=int(cell.epochs_trained * STEPS_PER_EPOCH),
        steps_per_epoch=STEPS_PER_EPOCH,
        rounds_planned=cell.epochs or 1,
        rounds_completed=len(_history(cell, val["acc"])),
        best_round=1,
        history=_history(cell, val["acc"]),
        flags=flags,
        efficiency=100 * test["acc"] / (cell.n_params / 1e6),
    )


def write_grid(folder: Path, cells: list[Cell]) -> Path:
    """A benchmark folder (results store and run folders) holding `cells`."""
    store = ResultsStore(folder)
    for cell in cells:
        tag = f"-{Path(cell.pretrained).name}-{cell.finetune}" if cell.pretrained else ""
        run_dir = folder / "runs" / f"{cell.dataset}-{cell.model}-{cell.seed}{tag}"
        config = _config(cell, run_dir)
        key = f"{cell.dataset}|{cell.model}|{cell.seed}|{config_hash(config)}"
        store.add_cells([{"key": key, "dataset": cell.dataset, "size": 28, "model": cell.model,
                          "seed": cell.seed, "config_hash": config_hash(config),
                          "config": config.to_dict(), "run_dir": str(run_dir)}])  # fmt: skip
        if cell.status == "pending":
            continue
        store.claim([key])
        if cell.status == "failed":
            store.fail(key, cell.error)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        results = _results(cell, config, run_dir)
        atomic_write_json(run_dir / "results.json", results.to_json())
        store.finish(key, results, run_dir / "results.json")
    return folder
