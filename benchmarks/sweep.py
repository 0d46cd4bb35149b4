"""A sweep of training recipes x models x seeds on MedMNIST files, reported as mean ± sd.

Each recipe is a set of training options over medbench's defaults (the keys of a
`medbench train --config` file), given as NAME=JSON or NAME=@FILE (a JSON file, e.g. the
best trial of `medbench tune`; the keys a sweep sets itself are ignored there). Every
(dataset, model, recipe) is trained for every seed through `medbench.training.engine.train`, several
runs at a time in worker processes with a thread count each (on a GPU they share the card).

Every round a callback scores the test split with the weights that round validated:
recorded only, nothing selects on it. So each run reports the test metrics of the weights
selected on validation (the engine's own final evaluation) and of the final weights, and
with --tta the flip-TTA test AUC of the selected weights. A table of mean ± sd over seeds
is printed; --csv appends one row per (dataset, model, recipe) to a results file.

    python benchmarks/sweep.py --datasets breastmnist --models advanced_cnn,efficientnet \\
        --recipe default={} --recipe wd0.2='{"weight_decay": 0.2}' \\
        --recipe noaug='{"augment": "none"}' --seeds 10 --epochs 40 --epochs resnet18=17 \\
        --workers 2 --threads 1 --csv docs/results/breast-recipes-epyc-avx2.csv
    python benchmarks/sweep.py --datasets breastmnist pneumoniamnist --seeds 3 \\
        --budget breastmnist=60 --budget pneumoniamnist=150 --recipe tuned=@best.json

Run lengths: --epochs and --budget take N, or KEY=N where KEY is a dataset or a model
(a model's entry wins over a dataset's, which wins over a bare N); a recipe that sets
`epochs` or `time_budget_seconds` wins over both, and both win over --config's; with
none of them, medbench's default epochs.
Runs with fixed epochs give the same numbers at any load; time budgets do not. Finished
runs in --out are reused (so a sweep cut short resumes, and rerunning it only reports);
runs start in priority order, every recipe's first seeds before anyone's later seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from _common import (
    SHARED_DATA,
    add_csv_arguments,
    append_csv,
    flip_tta_test_auc,
    mean_std,
    sd,
    seeds_argument,
)
from medbench.errors import MedbenchError
from medbench.training.callbacks import Callback, RoundEnd
from medbench.training.config import TrainConfig, load_config_file, parse_duration

# What a sweep decides itself: refused in a recipe given inline, ignored in a recipe file.
SWEEP_KEYS = ("dataset", "model", "seed", "size", "device", "data_dir", "run_dir")
LENGTH_KEYS = ("epochs", "time_budget_seconds")
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ----------------------------------------------------------------------------- arguments


def recipe_argument(text: str) -> tuple[str, dict[str, Any]]:
    """argparse type of --recipe: NAME=JSON or NAME=@FILE -> (name, training options)."""
    name, sep, value = text.partition("=")
    if not sep or not RECIPE_NAME.match(name):
        raise argparse.ArgumentTypeError(
            f"{text!r}: write NAME=JSON or NAME=@FILE, NAME of letters, digits and ._+-"
        )
    try:
        if value.startswith("@"):
            options = load_config_file(value[1:])
            return name, {k: v for k, v in options.items() if k not in SWEEP_KEYS}
        options = json.loads(value)
    except (ValueError, MedbenchError) as exc:
        raise argparse.ArgumentTypeError(f"recipe {name}: {exc}") from None
    if not isinstance(options, dict):
        raise argparse.ArgumentTypeError(f"recipe {name}: {value!r} is not a JSON object")
    refused = sorted(set(options) & set(SWEEP_KEYS))
    if refused:
        raise argparse.ArgumentTypeError(
            f"recipe {name} sets {', '.join(refused)}: the sweep's own options decide that"
        )
    return name, options


def _keyed(kind: str, read):
    """argparse type of N or KEY=N, N read by `read`."""

    def parse(text: str) -> tuple[str, float]:
        key, sep, value = text.rpartition("=")
        try:
            number = read(value)
        except (ValueError, MedbenchError):
            raise argparse.ArgumentTypeError(f"--{kind} {text!r}: write N or KEY=N") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"--{kind} {text!r}: must be positive")
        return key.strip(), number

    return parse


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--config: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--config must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=str(SHARED_DATA), help="folder of the npz files")
    ap.add_argument("--datasets", nargs="+", default=["breastmnist"], metavar="DATASET")
    ap.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224))
    ap.add_argument("--models", default="advanced_cnn", help="comma-separated model names")
    ap.add_argument(
        "--recipe",
        dest="recipes",
        action="append",
        type=recipe_argument,
        metavar="NAME=JSON|NAME=@FILE",
        help="a recipe (repeatable, the first is the baseline of the table's deltas); "
        "default: default={}",
    )
    ap.add_argument("--config", type=json_object, default={}, help="options (JSON) for all")
    ap.add_argument(
        "--seeds", type=seeds_argument, default=seeds_argument("3"), help="N, or a list a,b,c"
    )
    ap.add_argument(
        "--epochs", action="append", default=[], type=_keyed("epochs", int), metavar="[KEY=]N"
    )
    ap.add_argument(
        "--budget",
        action="append",
        default=[],
        type=_keyed("budget", parse_duration),
        metavar="[KEY=]TIME",
        help="time budget per run (90s, 2m, ...)",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ap.add_argument("--workers", type=int, default=1, help="runs at a time (processes)")
    ap.add_argument("--threads", type=int, help="CPU threads per worker (default: cores/workers)")
    ap.add_argument("--tta", action="store_true", help="also the flip-TTA test AUC")
    ap.add_argument("--out", type=Path, default=Path("/tmp/medbench-sweep"), help="run folders")
    add_csv_arguments(ap, "(dataset, model, recipe)")
    return ap


# ----------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Job:
    """One run of the sweep: everything a worker process needs."""

    dataset: str
    size: int
    model: str
    recipe: str
    options: dict[str, Any]  # --config, the recipe and the run length, merged
    seed: int
    device: str
    data_dir: str
    run_dir: str
    tta: bool

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.model} {self.recipe} s{self.seed}"


class RoundScores(Callback):
    """Every round's test ACC/AUC of the weights that round validated (BatchNorm
    recalibrated), and the flip-TTA test AUC of the round now selected: recorded only,
    never used to select."""

    def __init__(self, data, tta: bool) -> None:
        self.data, self.tta = data, tta
        self.rounds: list[dict[str, Any]] = []
        self.selected_tta_auc: float | None = None

    def on_round_end(self, event: RoundEnd) -> None:
        from medbench.scoring import metrics
        from medbench.training.inference import labels_numpy, predict_logits

        task, test = self.data.info.task, self.data.test
        logits = predict_logits(event.model, test.images, event.runtime)
        probs = metrics.probabilities_from_logits(logits, task)
        y = labels_numpy(test.labels)
        record = event.record
        self.rounds.append(
            {
                "round": record["round"],
                "val_auc": record.get("val_auc"),
                "test_acc": metrics.official_acc(y, probs, task),
                "test_auc": metrics.official_auc(y, probs, task),
            }
        )
        if self.tta and event.is_best:
            dataset = self.data.info.name
            self.selected_tta_auc = flip_tta_test_auc(
                event.model, self.data, event.runtime, dataset
            )


def job_config(job: Job) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            **job.options,
            "dataset": job.dataset,
            "model": job.model,
            "size": job.size,
            "seed": job.seed,
            "device": job.device,
            "data_dir": job.data_dir,
            "run_dir": job.run_dir,
        }
    ).validate()


@cache
def _data(dataset: str, size: int, data_dir: str):
    from medbench.data import load_dataset

    return load_dataset(dataset, size, data_dir, progress=False)


def run_one(job: Job, threads: int | None = None) -> dict[str, Any]:
    """Train one run (or read its finished summary) and return its summary."""
    import torch

    from medbench.training.engine import train
    from medbench.utils.fsutil import atomic_write_json

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(job.run_dir)
    summary_path = run_dir / "sweep.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # a run killed before its summary: again
    warnings.simplefilter("ignore")  # split-size and collapse warnings: in results.json
    data = _data(job.dataset, job.size, job.data_dir)
    scores = RoundScores(data, job.tta)
    results = train(job_config(job), data=data, progress=False, measure=False, callbacks=[scores])
    final = scores.rounds[-1]
    summary = {
        **asdict(job),
        "test": {"acc": results.test["acc"], "auc": results.test["auc"]},
        "final": {"acc": final["test_acc"], "auc": final["test_auc"]},
        "tta_auc": scores.selected_tta_auc,
        "best_round": results.best_round,
        "rounds": results.rounds_completed,
        "epochs": results.epochs_trained,
        "train_seconds": results.timing.train_seconds,
        "flags": results.flags,
        "history": scores.rounds,
    }
    atomic_write_json(summary_path, summary)  # a killed sweep leaves no half-written summary
    return summary


# ----------------------------------------------------------------------------- the sweep


def run_length(args: argparse.Namespace, dataset: str, model: str) -> dict[str, Any]:
    """The epochs or time budget of a (dataset, model): the most specific entry wins."""
    epochs, budget = dict(args.epochs), dict(args.budget)
    for key in (model, dataset, ""):
        if key in epochs and key in budget:
            raise SystemExit(f"--epochs and --budget both set {key or 'every run'}")
        if key in epochs:
            return {"epochs": int(epochs[key]), "time_budget_seconds": None}
        if key in budget:
            return {"epochs": None, "time_budget_seconds": float(budget[key])}
    return {}  # --config's length, or medbench's default epochs


def check_keys(args: argparse.Namespace) -> None:
    """Every KEY of --epochs/--budget KEY=N names a dataset or a model of the sweep."""
    known = {"", *args.datasets, *args.models.split(",")}
    unknown = sorted({key for key, _ in args.epochs + args.budget} - known)
    if unknown:
        raise SystemExit(
            f"--epochs/--budget name {', '.join(unknown)}: neither a dataset nor a model "
            "of this sweep"
        )


def merged_options(args, dataset: str, model: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """--config, then --epochs/--budget, then the recipe: a recipe that sets a length
    replaces the others' length."""
    base = {**args.config, **run_length(args, dataset, model)}
    if set(LENGTH_KEYS) & set(recipe):
        base = {k: v for k, v in base.items() if k not in LENGTH_KEYS}
    return {**base, **recipe}


def jobs(args: argparse.Namespace) -> list[Job]:
    """Every run, in priority order: each seed of every cell before the next seed."""
    out = []
    for seed in args.seeds:
        for dataset in args.datasets:
            for model in args.models.split(","):
                for name, recipe in args.recipes:
                    options = merged_options(args, dataset, model, recipe)
                    identity = json.dumps(
                        [dataset, args.size, model, options, args.device], sort_keys=True
                    )
                    tag = hashlib.sha256(identity.encode()).hexdigest()[:8]
                    run_dir = args.out / f"{dataset}-{model}-{name}-{tag}-s{seed}"
                    out.append(Job(dataset, args.size, model, name, options, seed,
                                   args.device, args.data_dir, str(run_dir), args.tta))  # fmt: skip
    return out


def _pool(workers: int, threads: int | None) -> ProcessPoolExecutor:
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the workers' torch
    # spawn, not fork: CUDA cannot be used in a forked child of a process that touched it
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def run_all(todo: list[Job], workers: int, threads: int | None) -> Iterator[tuple[Job, Any]]:
    """(job, summary or the exception it raised) as runs finish."""
    if workers <= 1:
        for job in todo:
            try:
                yield job, run_one(job, threads)
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the sweep
                yield job, exc
        return
    with _pool(workers, threads) as pool:
        futures: dict[Future, Job] = {pool.submit(run_one, job, threads): job for job in todo}
        for done in as_completed(futures):
            exc = done.exception()
            yield futures[done], exc if exc is not None else done.result()


# ----------------------------------------------------------------------------- the report


def describe_length(options: dict[str, Any]) -> str:
    """`epochs 20`, `budget 60s` or `default epochs`: the run length asked for."""
    if options.get("time_budget_seconds"):
        return f"budget {options['time_budget_seconds']:g}s"
    if options.get("epochs"):
        return f"epochs {options['epochs']}"
    return "default epochs"


def _values(runs: list[dict[str, Any]], key: str, sub: str | None = None) -> list[Any]:
    """runs' values of `key` (or of `key`'s `sub`), seed by seed."""
    return [r[key] if sub is None else r[key][sub] for r in runs]


def _metric(name: str, values: list[float]) -> dict[str, str]:
    """NAME ('mean ± sd'), NAME_mean and NAME_sd over seeds."""
    return {
        name: mean_std(values),
        f"{name}_mean": f"{statistics.mean(values):.4f}",
        f"{name}_sd": f"{sd(values):.4f}",
    }


def cell_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results row: a (dataset, model, recipe) over its seeds. `test_*`: the weights
    selected on validation; `final_*`: the final weights."""
    first = runs[0]
    recipe = {k: v for k, v in first["options"].items() if k not in LENGTH_KEYS}
    best_auc, final_auc = _values(runs, "test", "auc"), _values(runs, "final", "auc")
    tta = [r["tta_auc"] for r in runs if r["tta_auc"] is not None]
    return {
        "dataset": first["dataset"],
        "size": first["size"],
        "model": first["model"],
        "recipe": first["recipe"],
        "options": json.dumps(recipe, sort_keys=True),
        "length": describe_length(first["options"]),
        "device": first["device"],
        "seeds": " ".join(str(r["seed"]) for r in runs),
        "runs": len(runs),
        "epochs": f"{statistics.mean(_values(runs, 'epochs')):.4g}",
        "train_seconds": f"{statistics.mean(_values(runs, 'train_seconds')):.1f}",
        **_metric("test_acc", _values(runs, "test", "acc")),
        **_metric("test_auc", best_auc),
        "seed_aucs": " ".join(f"{v:.4f}" for v in best_auc),
        **_metric("final_acc", _values(runs, "final", "acc")),
        **_metric("final_auc", final_auc),
        "final_seed_aucs": " ".join(f"{v:.4f}" for v in final_auc),
        "tta_auc": mean_std(tta) if tta else "",
        "flagged_runs": sum(bool(r["flags"]) for r in runs),
    }


def rows(summaries: list[dict[str, Any]], todo: list[Job]) -> list[dict[str, Any]]:
    """One row per (dataset, model, recipe), in the sweep's order, of the finished runs."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for job in todo:
        cells.setdefault((job.dataset, job.model, job.recipe), [])
    for s in sorted(summaries, key=lambda s: s["seed"]):
        cells[(s["dataset"], s["model"], s["recipe"])].append(s)
    return [cell_row(runs) for runs in cells.values() if runs]


def markdown(table: list[dict[str, Any]], tta: bool) -> str:
    """The printed table: test metrics of the weights selected on validation, the final
    weights' AUC, and each recipe's AUC minus the first recipe's (same dataset and model)."""
    head = ["dataset", "model", "recipe", "runs", "epochs", "test ACC", "test AUC", "vs first",
            "AUC, final weights", *(["AUC, flip TTA"] if tta else []), "train s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    base: dict[tuple[str, str], float] = {}
    for r in table:
        auc = float(r["test_auc_mean"])
        first = base.setdefault((r["dataset"], r["model"]), auc)
        cells = [r["dataset"], r["model"], r["recipe"], r["runs"], r["epochs"], r["test_acc"],
                 r["test_auc"], f"{auc - first:+.3f}", r["final_auc"],
                 *([r["tta_auc"]] if tta else []), r["train_seconds"]]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.recipes = args.recipes or [("default", {})]
    names = [name for name, _ in args.recipes]
    if len(set(names)) != len(names):
        raise SystemExit(f"recipe names must differ: {', '.join(names)}")
    check_keys(args)
    threads = args.threads
    if threads is None and args.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    todo = jobs(args)
    for job in todo:  # a bad option stops the sweep before its first run, not in every run
        try:
            job_config(job)
        except MedbenchError as exc:
            raise SystemExit(f"recipe {job.recipe}: {exc}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    summaries, failed = [], 0
    for job, result in run_all(todo, args.workers, threads):
        if isinstance(result, BaseException):
            failed += 1
            print(f"{job.label}: FAILED {result!r}", file=sys.stderr, flush=True)
            continue
        summaries.append(result)
        print(f"{job.label}: test AUC {result['test']['auc']:.3f} (final weights "
              f"{result['final']['auc']:.3f}), {result['train_seconds']:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    table = rows(summaries, todo)
    print(markdown(table, args.tta))
    if args.csv and table:
        append_csv(args.csv, table, args.machine, args.device)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
