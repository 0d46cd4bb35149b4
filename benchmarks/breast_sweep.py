"""Many seeds of BreastMNIST recipes at once, with every epoch's test metrics, so that both
recipe changes and model-selection rules can be compared beyond the seed noise.

On the 156-image BreastMNIST test split one run's test AUC spreads by +-0.02-0.03 between
seeds, so 3 seeds cannot tell apart changes of 0.01. This script runs each (model, variant)
for many seeds, several runs at a time in worker processes (on a GPU they share the card;
on a CPU give each a thread), at a fixed number of epochs per model: about what 120 s buy
on the 2-core project CPU (advanced_cnn 56, efficientnet 40, resnet18 17).

Every epoch it also scores the test split (plain and with the flips the dataset allows), so
one run yields the test metrics of several selection rules, computed afterwards from the
history: `val_auc` (medbench's rule: the first epoch with the best validation AUC),
`val_auc_last` (the last such epoch), `val_loss` (lowest validation loss) and `last` (the
final epoch). Test metrics are recorded only: nothing selects on them.

    python benchmarks/breast_sweep.py --device cuda --workers 8 --seeds 10 --out /tmp/sweep
    python benchmarks/breast_sweep.py --summarise /tmp/sweep

Finished runs in --out are reused; runs are started in priority order (every variant's
first seeds before anyone's later seeds), so a sweep cut short still compares all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from _common import SHARED_DATA, flip_tta_test_auc, mean_std, seeds_argument

DATASET = "breastmnist"
EPOCHS = {"advanced_cnn": 56, "efficientnet": 40, "resnet18": 17}
# (model, variant name, config changes): the defaults of all three models first.
GRID: list[tuple[str, str, dict]] = [
    ("advanced_cnn", "default", {}),
    ("efficientnet", "default", {}),
    ("resnet18", "default", {}),
    ("advanced_cnn", "wd0.2", {"weight_decay": 0.2}),
    ("advanced_cnn", "lr1e-3", {"lr": 1e-3}),
    ("advanced_cnn", "lr4e-3", {"lr": 4e-3}),
    ("advanced_cnn", "ls0.1", {"label_smoothing": 0.1}),
    ("advanced_cnn", "dropout0.3", {"dropout": 0.3}),
    ("advanced_cnn", "strong", {"augment": "strong"}),
    ("advanced_cnn", "noaug", {"augment": "none"}),
    ("advanced_cnn", "bs64", {"batch_size": 64}),
    ("advanced_cnn", "ep28", {"epochs": 28}),
    ("advanced_cnn", "ep112", {"epochs": 112}),
    ("advanced_cnn", "balanced", {"class_balance": "weighted_loss"}),
]
RULES = ("val_auc", "val_auc_last", "val_loss", "last")


def run_one(
    model: str,
    name: str,
    change: dict,
    seed: int,
    device: str,
    data_dir: str,
    out: str,
    threads: int,
) -> dict:
    """Train one run, scoring the test split after every epoch; returns its summary."""
    import torch

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")  # split-size and collapse warnings are in results.json
    from medbench import metrics
    from medbench.callbacks import Callback
    from medbench.config import TrainConfig
    from medbench.data import load_dataset
    from medbench.engine import train
    from medbench.fsutil import atomic_write_json
    from medbench.inference import labels_numpy, predict_logits
    from medbench.runtime import resolve_runtime

    run_dir = Path(out) / f"{model}-{name}-s{seed}"
    summary_path = run_dir / "sweep.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    data = load_dataset(DATASET, 28, data_dir, progress=False)
    runtime = resolve_runtime(device, "auto", True)
    y_test = labels_numpy(data.test.labels)
    task = data.info.task
    history: list[dict] = []

    class ScoreTest(Callback):
        """Every round's test metrics, from the model as validated that round (BN
        recalibrated): recorded only, never used for selection."""

        def on_round_end(self, event) -> None:
            net, r = event.model, event.record
            probs = metrics.probabilities_from_logits(
                predict_logits(net, data.test.images, runtime), task
            )
            history.append(
                {
                    "epoch": r["round"],
                    "val_auc": r["val_auc"],
                    "val_acc": r["val_acc"],
                    "val_loss": r["val_loss"],
                    "test_auc": metrics.official_auc(y_test, probs, task),
                    "test_acc": metrics.official_acc(y_test, probs, task),
                    "test_tta_auc": flip_tta_test_auc(net, data, runtime, DATASET),
                }
            )

    config = TrainConfig(
        dataset=DATASET,
        model=model,
        seed=seed,
        device=device,
        run_dir=str(run_dir),
        **{"epochs": EPOCHS[model], **change},
    )
    results = train(config, data=data, progress=False, measure=False, callbacks=[ScoreTest()])
    summary = {
        "model": model,
        "variant": name,
        "change": change,
        "seed": seed,
        "device": str(runtime.device),
        "precision": runtime.precision,
        "final": {"auc": results.test["auc"], "acc": results.test["acc"]},
        "best_epoch": results.best_round,
        "train_seconds": results.timing.train_seconds,
        "history": history,
    }
    atomic_write_json(summary_path, summary)  # a killed sweep leaves no half-written run
    return summary


def selected(history: list[dict], rule: str) -> dict:
    """The epoch a selection rule picks (from validation numbers and order alone)."""
    if rule == "last":
        return history[-1]
    if rule == "val_loss":
        return min(history, key=lambda h: h["val_loss"])
    best = max(h["val_auc"] for h in history)
    ties = [h for h in history if h["val_auc"] == best]
    return ties[0] if rule == "val_auc" else ties[-1]


def summarise(out: Path) -> list[str]:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/sweep.json"))]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["variant"]), []).append(r)
    lines = [
        "| model | variant | runs | "
        + " | ".join(f"AUC, {rule}" for rule in RULES)
        + " | ACC, val_auc | AUC+flip TTA, val_auc | engine's AUC (check) | s/run |",
        "|---|---|---:|" + "---|" * (len(RULES) + 4),
    ]
    order = {(m, v): i for i, (m, v, _) in enumerate(GRID)}
    for key in sorted(groups, key=lambda k: order.get(k, 99)):
        rs = groups[key]
        cells = [mean_std(selected(r["history"], rule)["test_auc"] for r in rs) for rule in RULES]
        lines.append(
            f"| {key[0]} | {key[1]} | {len(rs)} | "
            + " | ".join(cells)
            + f" | {mean_std(selected(r['history'], 'val_auc')['test_acc'] for r in rs)}"
            + f" | {mean_std(selected(r['history'], 'val_auc')['test_tta_auc'] for r in rs)}"
            + f" | {mean_std(r['final']['auc'] for r in rs)}"
            + f" | {statistics.mean(r['train_seconds'] for r in rs):.0f} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    ap.add_argument("--seeds", type=seeds_argument, default=seeds_argument("10"))
    ap.add_argument("--only", nargs="*", help="variant names (model:variant) to run")
    ap.add_argument("--out", default="/tmp/breast-sweep")
    ap.add_argument("--summarise", metavar="OUT", help="only print the table of a sweep folder")
    args = ap.parse_args()
    if args.summarise:
        print("\n".join(summarise(Path(args.summarise))))
        return 0
    grid = [g for g in GRID if not args.only or f"{g[0]}:{g[1]}" in args.only]
    jobs = [(m, v, c, s) for s in args.seeds for (m, v, c) in grid]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    # spawn, not fork: CUDA cannot be used in a forked child of a process that touched it
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pool.submit(run_one, m, v, c, s, args.device, args.data_dir, args.out, args.threads): (
                m,
                v,
                s,
            )
            for (m, v, c, s) in jobs
        }
        for done in as_completed(futures):
            m, v, s = futures[done]
            try:
                r = done.result()
                print(
                    f"{m} {v} s{s}: test AUC {r['final']['auc']:.3f} ({r['train_seconds']:.0f} s)",
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the sweep
                print(f"{m} {v} s{s}: FAILED {exc!r}", flush=True)
    print("\n".join(summarise(Path(args.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
