"""A stand-in for `medbench.training.engine.train` used by the benchmark/store/report tests: it writes
a results.json (`RunResults.to_json()`), predictions.npz and a per-round checkpoint, with
test accuracies taken from a table so tests can choose who wins. No tests live here."""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medbench.runs.results import ModelInfo, RoundRecord, RunResults, Timing
from medbench.training.callbacks import RoundEnd
from medbench.training.config import TrainConfig
from medbench.utils.fsutil import atomic_write, atomic_write_json

N_PARAMS = {
    "advanced_cnn": 400_000,
    "efficientnet": 4_000_000,
    "resnet18": 11_000_000,
    "tiny": 50_000,
}
STEPS_PER_EPOCH = 10
N_CLASSES, N_IMAGES = 3, 300
ENVIRONMENT = {
    "medbench": "test",
    "torch": "x",
    "python": "3",
    "platform": "linux",
    "device": "cpu",
    "precision": "fp32",
    "channels_last": False,
    "threads": 1,
}


def _jitter(*parts: Any) -> float:
    """A deterministic small number in [-0.01, 0.01] from the parts (same seed, same value)."""
    return (zlib.crc32("|".join(map(str, parts)).encode()) % 2001 - 1000) / 100_000


def schema1_json(results: RunResults) -> dict[str, Any]:
    """`results` as medbench wrote results.json before schema 2, when rounds were called
    epochs: `epochs_planned`, `epochs_completed`, `best_epoch`, history records keyed
    "epoch" and without their `epochs`, no `epochs_trained`."""
    d = results.to_json()
    d["schema_version"] = 1
    d["epochs_planned"] = d.pop("rounds_planned")
    d["epochs_completed"] = d.pop("rounds_completed")
    d["best_epoch"] = d.pop("best_round")
    del d["epochs_trained"]
    d["history"] = [
        {"epoch": r["round"], **{k: v for k, v in r.items() if k not in ("round", "epochs")}}
        for r in d["history"]
    ]
    return d


def _split_metrics(acc: float, collapsed: bool) -> dict[str, Any]:
    return {
        "acc": acc,
        "auc": 0.8 + acc / 10,
        "balanced_acc": acc,
        "macro_f1": acc,
        "per_class": [],
        "ece": 0.05,
        "confusion_matrix": [[75, 15, 9], [20, 70, 10], [5, 5, 91]],
        "prediction_counts": [100, 90, 110],
        "true_counts": [99, 100, 101],
        "majority_fraction": 1.0 if collapsed else round(0.3 + acc / 10, 4),
        "n": N_IMAGES,
    }


def _provenance(config: TrainConfig, md5_matches: bool) -> dict[str, Any]:
    return {
        "name": config.dataset,
        "size": config.size,
        "task": "multi-class",
        "n_classes": N_CLASSES,
        "n_channels": 1,
        "label_names": ["a", "b", "c"],
        "license": "CC BY-NC 4.0" if config.dataset == "dermamnist" else "CC BY 4.0",
        "file": "x.npz",
        "md5": "0",
        "official_md5": "0" if md5_matches else "1",
        "md5_matches": md5_matches,
        "official": md5_matches,
        "warnings": [],
    }


def _train_rounds(
    ckpt: Path, rounds: int, val_acc: float, *, resume: bool, callbacks, seconds: float
) -> list[RoundRecord]:
    """The history after `rounds` rounds, continuing from `ckpt` when resuming; each round
    rewrites the checkpoint and is handed to the callbacks."""
    history: list[RoundRecord] = []
    if resume and ckpt.exists():
        history = [RoundRecord.from_json(r) for r in json.loads(ckpt.read_text())["history"]]
    for n in range(len(history) + 1, rounds + 1):
        time.sleep(seconds)
        record = RoundRecord(
            round=n,
            step=n * STEPS_PER_EPOCH,
            train_loss=1.0 / n,
            val_loss=1.1 / n,
            val_acc=val_acc * n / rounds,
            val_auc=0.8,
            lr=1e-3,
            seconds=0.01,
            train_images_per_second=1000.0,
            epochs=float(n),
        )
        history.append(record)
        atomic_write_json(ckpt, {"round": n, "history": [r.to_json() for r in history]})
        for cb in callbacks:
            cb.on_round_end(RoundEnd(None, record.to_json(), None, None, rounds, True))
    return history


def _write_predictions(run_dir: Path, seed: int, acc: float, key: tuple[str, str]) -> None:
    """Test predictions right on round(acc * N_IMAGES) images: which images a model gets
    right is fixed by (dataset, model), so seeds of one model agree image by image and
    two models differ as their accuracies say."""
    rng = np.random.default_rng(zlib.crc32("|".join(key).encode()))
    labels = (np.arange(N_IMAGES) % N_CLASSES).astype(np.int64)
    right = np.zeros(N_IMAGES, bool)
    right[rng.permutation(N_IMAGES)[: round(acc * N_IMAGES)]] = True
    predicted = np.where(right, labels, (labels + 1) % N_CLASSES)
    noise = np.random.default_rng(seed).dirichlet(np.ones(N_CLASSES), size=N_IMAGES)
    probs = 0.4 * noise
    probs[np.arange(N_IMAGES), predicted] += 0.6
    atomic_write(
        run_dir / "predictions.npz",
        lambda fh: np.savez(
            fh,
            val_logits=np.log(probs),
            val_labels=labels[:, None],
            test_logits=np.log(probs),
            test_labels=labels[:, None],
            test_probs=probs,
        ),
    )


def make_fake_train(
    accuracy: dict[tuple[str, str], float] | None = None,
    *,
    seconds_per_epoch: float = 0.0,
    marker: str | Path | None = None,
    collapse: set[tuple[str, str]] | None = None,
    fail: set[tuple[str, str]] | None = None,
    md5_matches: bool = True,
    schema: int = 2,
):
    """Return a train(config, ...) whose test accuracy for (dataset, model) is
    `accuracy[...]` (default 0.7) plus a small seed-dependent jitter. `schema=1` writes
    results.json as medbench did before schema 2 (see `schema1_json`)."""
    accuracy = accuracy or {}
    collapse = collapse or set()
    fail = fail or set()

    def train(
        config: TrainConfig, *, data=None, progress=None, resume=False, callbacks=(), measure=True
    ) -> RunResults:
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if marker is not None:  # one line per call that trains: counts runs across processes
            fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{config.dataset}|{config.model}|{config.seed}|{os.getpid()}\n".encode())
            os.close(fd)
        key = (config.dataset, config.model)
        if key in fail:
            raise RuntimeError(f"boom in {config.model}")
        rounds = config.epochs or 2
        acc = accuracy.get(key, 0.7) + _jitter(*key, config.seed)
        val_acc = min(1.0, acc * 1.03)
        history = _train_rounds(
            run_dir / "checkpoint.pt",
            rounds,
            val_acc,
            resume=resume,
            callbacks=callbacks,
            seconds=seconds_per_epoch,
        )
        collapsed = key in collapse
        test_acc = 0.25 if collapsed else acc
        n_params = N_PARAMS.get(config.model, 100_000)
        results = RunResults(
            run_dir=str(run_dir),
            config=config.to_dict(),
            dataset=_provenance(config, md5_matches),
            model=ModelInfo(config.model, n_params, n_params * 10),
            metrics={
                "val": _split_metrics(val_acc, collapsed),
                "test": _split_metrics(test_acc, collapsed),
                "temperature": 1.0,
                "test_ece_calibrated": 0.04,
                "val_ece_calibrated": 0.04,
            },
            timing=Timing(rounds * seconds_per_epoch + 0.5, 0.1, 0.1, 1e4),
            steps=rounds * STEPS_PER_EPOCH,
            steps_per_epoch=STEPS_PER_EPOCH,
            rounds_planned=rounds,
            rounds_completed=rounds,
            best_round=rounds,
            history=history,
            flags=["predicts one class for 100% of test images"] if collapsed else [],
            efficiency=100 * test_acc / (n_params / 1e6),
            environment=dict(ENVIRONMENT),
        )
        _write_predictions(run_dir, config.seed, test_acc, key)
        written = results.to_json() if schema == 2 else schema1_json(results)
        atomic_write_json(run_dir / "results.json", written)
        return results

    return train
