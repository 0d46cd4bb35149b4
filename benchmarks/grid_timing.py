"""Where a benchmark grid's time went, run by run, from its results store.

Reads OUT/results.json (the store's export) and each finished run's results.json, and
prints per run: epochs, steps per epoch, training seconds, mean seconds per round
(training + validation + checkpoint), seconds of the final evaluation, the median training
images/s of its rounds, and the share of its time budget it trained (when it had one);
then the grid's run length and the wall seconds its runs spent, from the results store.

    python benchmarks/grid_timing.py medbench-results
    # what the same runs would take at 40 epochs each (a projection from the measured
    # round and evaluation times, not a measurement)
    python benchmarks/grid_timing.py OUT --project-epochs 40 --seeds 3 --json timing.json
    # one results row per run
    python benchmarks/grid_timing.py OUT --csv docs/results/grid-timing-h200.csv
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import add_csv_arguments, append_csv
from medbench.runs.store import STORE_NAME, ResultsStore, describe_length


def run_rows(out: Path) -> list[dict]:
    store = out / "results.json"
    if not store.is_file():
        raise SystemExit(f"{store} not found: is {out} a benchmark output folder?")
    rows = []
    for entry in json.loads(store.read_text()):
        if entry.get("status") != "finished":
            continue
        result = json.loads(Path(entry["results_path"]).read_text())
        history = result["history"]
        timing = result["timing"]
        rounds = [h["seconds"] for h in history]
        epochs_per_round = (history[-1]["step"] / result["steps_per_epoch"]) / len(history)
        budget = result["config"].get("time_budget_seconds")
        rows.append(
            {
                "dataset": entry["dataset"],
                "size": entry["size"],
                "model": entry["model"],
                "seed": entry["seed"],
                "device": result["environment"].get("gpu") or result["environment"]["device"],
                "epochs": round(history[-1]["step"] / result["steps_per_epoch"], 2),
                "steps_per_epoch": result["steps_per_epoch"],
                "train_seconds": timing["train_seconds"],
                "round_seconds": statistics.mean(rounds),
                "epoch_seconds": statistics.mean(rounds) / epochs_per_round,
                "eval_seconds": timing["eval_seconds"],
                "train_images_per_second": statistics.median(
                    h["train_images_per_second"] for h in history
                ),
                "budget_seconds": budget,
                "budget_used": timing["train_seconds"] / budget if budget else None,
            }
        )
    return rows


def grid_budget(out: Path) -> dict | None:
    """The grid's run length and the wall seconds its runs spent, as the store keeps them
    (None for a folder without a store, e.g. runs of `medbench train`)."""
    if not (out / STORE_NAME).is_file():
        return None
    store = ResultsStore(out, create=False)
    length = store.grid_length()
    return {
        "length": length,
        "described": describe_length(length) if length is not None else "not recorded",
        "seconds_spent": store.seconds_spent(),
    }


def projection(rows: list[dict], epochs: int, seeds: int) -> dict:
    """Print what each cell's runs would take at `epochs` epochs x `seeds` seeds (from the
    measured round and evaluation times) and return the total."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["size"], r["model"]), []).append(r)
    total = 0.0
    print(f"\nprojected at {epochs} epochs x {seeds} seed(s) per cell:")
    for (dataset, size, model), rs in cells.items():
        per_run = statistics.mean(r["eval_seconds"] + epochs * r["epoch_seconds"] for r in rs)
        total += per_run * seeds
        print(f"  {dataset}-{size} {model}: {per_run:.0f} s per run")
    print(f"  all cells: {total / 60:.1f} min of training and evaluation")
    return {"epochs": epochs, "seeds": seeds, "seconds": total}


def csv_rows(rows: list[dict]) -> list[dict]:
    """The runs' rows as results rows: seconds to 0.1 s, shares to 0.001."""
    formats = {"round_seconds": ".2f", "epoch_seconds": ".2f", "train_seconds": ".1f",
               "eval_seconds": ".1f", "train_images_per_second": ".0f", "budget_used": ".3f",
               "budget_seconds": ".1f"}  # fmt: skip
    return [
        {k: "" if v is None else format(v, formats[k]) if k in formats else v for k, v in r.items()}
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the benchmark's --out folder")
    parser.add_argument("--project-epochs", type=int, help="also project each cell to N epochs")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell in the projection")
    parser.add_argument("--json", type=Path, help="also write the rows (and projection) here")
    add_csv_arguments(parser, "finished run")
    args = parser.parse_args()

    rows = run_rows(args.out)
    if not rows:
        raise SystemExit(f"no finished runs in {args.out}")
    print(
        "| dataset | model | seed | epochs | steps/epoch | train s | s/epoch | eval s "
        "| train img/s | budget used |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        used = f"{r['budget_used']:.0%}" if r["budget_used"] is not None else "-"
        print(
            f"| {r['dataset']}-{r['size']} | {r['model']} | {r['seed']} | {r['epochs']:g} "
            f"| {r['steps_per_epoch']} | {r['train_seconds']:.1f} | {r['epoch_seconds']:.2f} "
            f"| {r['eval_seconds']:.1f} | {r['train_images_per_second']:.0f} | {used} |"
        )
    print(f"\n{len(rows)} runs on {sorted({r['device'] for r in rows})}; "
          f"training {sum(r['train_seconds'] for r in rows):.0f} s, "
          f"final evaluations {sum(r['eval_seconds'] for r in rows):.0f} s")  # fmt: skip
    budget = grid_budget(args.out)
    if budget is not None:
        print(f"grid length {budget['described']}; its runs spent {budget['seconds_spent']:.0f} s")
    summary: dict = {"runs": rows, "grid": budget}
    if args.project_epochs:
        summary["projection"] = projection(rows, args.project_epochs, args.seeds)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.csv:
        on_cpu = all(r["device"] == "cpu" for r in rows)
        append_csv(args.csv, csv_rows(rows), args.machine, "cpu" if on_cpu else "auto")


if __name__ == "__main__":
    main()
