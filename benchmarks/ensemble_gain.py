"""How much do ensembles gain over the best single model? (writes docs/ensembles.md)

On each dataset, trains `--seeds` seeds of each of `--models` (reusing finished runs in
`--runs-dir`), then builds every ensemble method over all of them (and greedy selection with
test-time flips where the dataset allows them) and compares each with the best single
member, chosen by validation AUC as a user would choose it.

    python benchmarks/ensemble_gain.py --epochs 20 --seeds 3 --write docs/ensembles.md

The results table in the docs sits between `<!-- results -->` and `<!-- /results -->`.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

from _common import SHARED_DATA, replace_section, sd
from medbench.config import TrainConfig
from medbench.data import load_dataset
from medbench.ensemble import METHODS, build_ensemble, tta_views
from medbench.transfer import train_or_reuse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--datasets", default="breastmnist,pneumoniamnist")
    p.add_argument("--models", default="advanced_cnn,efficientnet")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, help="epochs per run (default: the engine's)")
    p.add_argument("--runs-dir", default="runs/ensemble_gain")
    p.add_argument(
        "--from-benchmark",
        metavar="DIR",
        help="use the finished runs of a `medbench benchmark` folder (e.g. the one "
        "benchmarks/real_data.py fills) instead of training; ensembles go to --runs-dir",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--no-tta", action="store_true", help="skip the greedy+TTA ensemble")
    p.add_argument("--write", metavar="FILE", help="replace the results section of this doc")
    args = p.parse_args()
    warnings.simplefilter("ignore")  # e.g. non-official files; the table records the settings

    rows = []
    for dataset in args.datasets.split(","):
        data = load_dataset(dataset, 28, args.data_dir, progress=False)
        dirs = []
        for model in args.models.split(",") if not args.from_benchmark else []:
            for seed in range(args.seeds):
                run_dir = Path(args.runs_dir) / dataset / model / f"seed{seed}"
                config = TrainConfig(
                    dataset=dataset, model=model, seed=seed, epochs=args.epochs,
                    device=args.device, data_dir=args.data_dir, run_dir=str(run_dir),
                )  # fmt: skip
                train_or_reuse(config, data=data)
                dirs.append(run_dir)
        if args.from_benchmark:
            for model in args.models.split(","):
                found = sorted(
                    Path(args.from_benchmark).glob(f"runs/{dataset}-28/{model}/*/results.json")
                )
                dirs += [f.parent for f in found]
        variants = [(m, False) for m in METHODS]
        if not args.no_tta and len(tta_views(dataset)) > 1:
            variants.append(("greedy", True))
        for method, tta in variants:
            out = Path(args.runs_dir) / dataset / "ensembles" / (method + ("+tta" if tta else ""))
            r = build_ensemble(dirs, method, out, tta, data=data, device=args.device)
            rows.append((dataset, r))
            print(_line(dataset, r), flush=True)
    table = _table(rows, args)
    print(table)
    if args.write:
        replace_section(args.write, "<!-- results -->", "<!-- /results -->", table)


def _line(dataset: str, r: dict) -> str:
    t, b = r["metrics"]["test"], r["best_single"]
    return (
        f"{dataset} {r['model']['name']}{' +TTA' if r['tta'] else ''}: test ACC {t['acc']:.4f} "
        f"AUC {t['auc']:.4f}; best single {b['name']} ACC {b['test_acc']:.4f} AUC {b['test_auc']:.4f}"
    )


def _table(rows: list[tuple[str, dict]], args: argparse.Namespace) -> str:
    source = (
        f"--from-benchmark {args.from_benchmark}` over the finished runs of that benchmark folder"
        if args.from_benchmark
        else f"--epochs {args.epochs} --seeds {args.seeds}`"
    )
    lines = [
        f"Measured by `python benchmarks/ensemble_gain.py --models {args.models} --datasets "
        f"{args.datasets} {source} (official test splits at 28 px; the best single model is "
        "the member with the best validation AUC).",
        "",
        "| dataset | ensemble | members used | test ACC | test AUC | ΔACC vs best single | "
        "ΔAUC vs best single | test ECE | params (M) | latency (ms/img) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = set()
    for dataset, r in rows:
        b = r["best_single"]
        if dataset not in done:
            done.add(dataset)
            accs = [m["test_acc"] for m in r["members"]]
            lines.append(
                f"| {dataset} | best single: {b['name']} | 1 | {b['test_acc']:.4f} | "
                f"{b['test_auc']:.4f} | | | {_num(b['test_ece_calibrated'], '.3f')} | "
                f"{b['n_params'] / 1e6:.2f} | {_num(b['latency_ms_per_image'], '.2f')} |"
            )
            lines.append(
                f"| {dataset} | mean of {len(accs)} singles | - | {statistics.mean(accs):.4f} "
                f"(sd {sd(accs):.4f}) | "
                f"{statistics.mean(m['test_auc'] for m in r['members']):.4f} | | | | | |"
            )
        t = r["metrics"]["test"]
        name = r["method"] + (" + TTA" if r["tta"] else "")
        lines.append(
            f"| {dataset} | {name} | {r['model']['n_members']} | {t['acc']:.4f} | {t['auc']:.4f} | "
            f"{t['acc'] - b['test_acc']:+.4f} | {t['auc'] - b['test_auc']:+.4f} | "
            f"{r['metrics']['test_ece_calibrated']:.3f} | {r['model']['params_m']:.2f} | "
            f"{_num(r['timing']['latency_ms_per_image'], '.2f')} |"
        )
    return "\n".join(lines)


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


if __name__ == "__main__":
    main()
