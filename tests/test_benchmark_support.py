"""A stand-in for `medbench.engine.train` used by the benchmark/store/report tests: it writes
a schema-conforming results.json, predictions.npz and a per-epoch checkpoint, with test
accuracies taken from a table so tests can choose who wins. No tests live here."""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medbench.callbacks import RoundEnd
from medbench.config import TrainConfig
from medbench.results import RunResults
from medbench.fsutil import atomic_write, atomic_write_json

N_PARAMS = {
    "advanced_cnn": 400_000,
    "efficientnet": 4_000_000,
    "resnet18": 11_000_000,
    "tiny": 50_000,
}


def _jitter(*parts: Any) -> float:
    """A deterministic small number in [-0.01, 0.01] from the parts (same seed, same value)."""
    return (zlib.crc32("|".join(map(str, parts)).encode()) % 2001 - 1000) / 100_000


def make_fake_train(
    accuracy: dict[tuple[str, str], float] | None = None,
    *,
    seconds_per_epoch: float = 0.0,
    marker: str | Path | None = None,
    collapse: set[tuple[str, str]] | None = None,
    fail: set[tuple[str, str]] | None = None,
    md5_matches: bool = True,
):
    """Return a train(config, ...) whose test accuracy for (dataset, model) is
    `accuracy[...]` (default 0.7) plus a small seed-dependent jitter."""
    accuracy = accuracy or {}
    collapse = collapse or set()
    fail = fail or set()

    def train(
        config: TrainConfig, *, data=None, progress=None, resume=False, callbacks=()
    ) -> RunResults:
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if marker is not None:  # one line per call that trains: counts runs across processes
            fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{config.dataset}|{config.model}|{config.seed}|{os.getpid()}\n".encode())
            os.close(fd)
        if (config.dataset, config.model) in fail:
            raise RuntimeError(f"boom in {config.model}")
        epochs = config.epochs or 2
        ckpt = run_dir / "checkpoint.pt"
        history = []
        start = 0
        if resume and ckpt.exists():
            state = json.loads(ckpt.read_text())
            start, history = state["epoch"], state["history"]
        key = (config.dataset, config.model)
        acc = accuracy.get(key, 0.7) + _jitter(*key, config.seed)
        val_acc = min(1.0, acc * 1.03)
        for epoch in range(start + 1, epochs + 1):
            time.sleep(seconds_per_epoch)
            record = {
                "round": epoch,
                "train_loss": 1.0 / epoch,
                "val_loss": 1.1 / epoch,
                "val_acc": val_acc * epoch / epochs,
                "val_auc": 0.8,
                "lr": 1e-3,
                "seconds": 0.01,
                "train_images_per_second": 1000.0,
            }
            history.append(record)
            atomic_write_json(ckpt, {"epoch": epoch, "history": history})
            for cb in callbacks:
                cb.on_round_end(RoundEnd(None, record, None, None, epochs, True))
        collapsed = key in collapse
        test_acc = 0.25 if collapsed else acc
        n_classes, n = 3, 40
        rng = np.random.default_rng(config.seed)
        labels = (np.arange(n) % n_classes).astype(np.int64)
        probs = rng.dirichlet(np.ones(n_classes), size=n)
        split = lambda a: {  # noqa: E731
            "acc": a,
            "auc": 0.8 + a / 10,
            "balanced_acc": a,
            "macro_f1": a,
            "per_class": [],
            "ece": 0.05,
            "confusion_matrix": [[10, 2, 1], [3, 9, 1], [1, 1, 12]],
            "prediction_counts": [14, 12, 14],
            "true_counts": [13, 13, 14],
            "majority_fraction": 1.0 if collapsed else round(0.3 + a / 10, 4),
            "n": n,
        }
        n_params = N_PARAMS.get(config.model, 100_000)
        results = {
            "schema_version": 1,
            "status": "finished",
            "run_dir": str(run_dir),
            "config": config.to_dict(),
            "dataset": {
                "name": config.dataset,
                "size": config.size,
                "task": "multi-class",
                "n_classes": n_classes,
                "n_channels": 1,
                "label_names": ["a", "b", "c"],
                "license": "CC BY-NC 4.0" if config.dataset == "dermamnist" else "CC BY 4.0",
                "file": "x.npz",
                "md5": "0",
                "official_md5": "0" if md5_matches else "1",
                "md5_matches": md5_matches,
                "official": md5_matches,
                "warnings": [],
            },
            "model": {
                "name": config.model,
                "n_params": n_params,
                "params_m": n_params / 1e6,
                "flops": n_params * 10,
                "gflops": n_params * 10 / 1e9,
                "options": {},
            },
            "epochs_planned": epochs,
            "epochs_completed": epochs,
            "best_epoch": epochs,
            "stopped_early": False,
            "history": history,
            "metrics": {
                "val": split(val_acc),
                "test": split(test_acc),
                "temperature": 1.0,
                "test_ece_calibrated": 0.04,
                "val_ece_calibrated": 0.04,
            },
            "flags": ["predicts one class for 100% of test images"] if collapsed else [],
            "collapsed": collapsed,
            "timing": {
                "train_seconds": epochs * seconds_per_epoch + 0.5,
                "eval_seconds": 0.1,
                "latency_ms_per_image": 0.1,
                "throughput_images_per_second": 1e4,
            },
            "efficiency": 100 * test_acc / (n_params / 1e6),
            "environment": {
                "medbench": "test",
                "torch": "x",
                "python": "3",
                "platform": "linux",
                "device": "cpu",
                "precision": "fp32",
                "channels_last": False,
                "threads": 1,
            },
        }
        atomic_write(
            run_dir / "predictions.npz",
            lambda fh: np.savez(
                fh,
                val_logits=probs,
                val_labels=labels[:, None],
                test_logits=probs,
                test_labels=labels[:, None],
                test_probs=probs,
            ),
        )
        atomic_write_json(run_dir / "results.json", results)
        return RunResults.from_json(results)

    return train
