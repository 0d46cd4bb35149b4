"""Does pretraining on PneumoniaMNIST help BreastMNIST? (writes docs/transfer.md)

For each seed: BreastMNIST from scratch, and PneumoniaMNIST-pretrained weights transferred
to BreastMNIST by full fine-tuning, linear probe and k-NN probe. Fine-tuning, linear probe
and the from-scratch run get the same BreastMNIST budget (`--epochs`); the pretraining
run (`--pretrain-epochs`) is shared by the three transfer modes of a seed. Finished runs
in `--runs-dir` are reused.

    python benchmarks/transfer_pneumonia_to_breast.py --epochs 20 --pretrain-epochs 10 \
        --seeds 3 --write docs/transfer.md

The results table in the docs sits between `<!-- results -->` and `<!-- /results -->`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import warnings
from pathlib import Path

from _common import SHARED_DATA, replace_section, sd
from medbench.config import TrainConfig
from medbench.transfer import train_or_reuse, transfer

SOURCE, TARGET = "pneumoniamnist", "breastmnist"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--model", default="advanced_cnn")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20, help="BreastMNIST epochs (every arm)")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="PneumoniaMNIST epochs")
    p.add_argument("--modes", default="full,linear-probe,knn")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1)
    p.add_argument("--runs-dir", default="runs/transfer_pneumonia_to_breast")
    p.add_argument("--device", default="auto")
    p.add_argument("--write", metavar="FILE", help="replace the results section of this doc")
    args = p.parse_args()
    warnings.simplefilter("ignore")

    arms: dict[str, list[dict]] = {"from scratch": []}
    for seed in range(args.seeds):
        base = TrainConfig(
            dataset=TARGET, model=args.model, seed=seed, epochs=args.epochs, device=args.device,
            data_dir=args.data_dir, backbone_lr_scale=args.backbone_lr_scale,
        )  # fmt: skip
        root = Path(args.runs_dir) / args.model / f"seed{seed}"
        scratch = dataclasses.replace(base, run_dir=str(root / f"scratch-{TARGET}"))
        arms["from scratch"].append(train_or_reuse(scratch).to_json())
        for mode in args.modes.split(","):
            r = transfer([SOURCE], base, root, mode=mode, pretrain_epochs=args.pretrain_epochs)
            arms.setdefault(f"{SOURCE} -> {mode}", []).append(r["target"])
        for name, results in arms.items():
            t = results[-1]["metrics"]["test"]
            print(f"seed {seed} {name}: test ACC {t['acc']:.4f} AUC {t['auc']:.4f}", flush=True)
    table = _table(arms, args)
    print(table)
    if args.write:
        replace_section(args.write, "<!-- results -->", "<!-- /results -->", table)


def _table(arms: dict[str, list[dict]], args: argparse.Namespace) -> str:
    lines = [
        f"Measured by `python benchmarks/transfer_pneumonia_to_breast.py --model {args.model} "
        f"--epochs {args.epochs} --pretrain-epochs {args.pretrain_epochs} --seeds {args.seeds} "
        f"--backbone-lr-scale {args.backbone_lr_scale}` (official BreastMNIST test split, 28 px; "
        f"mean and sample sd over seeds).",
        "",
        "| arm | BreastMNIST epochs | test ACC | test AUC | per-seed test AUC |",
        "|---|---|---|---|---|",
    ]
    scratch_auc = statistics.mean(r["metrics"]["test"]["auc"] for r in arms["from scratch"])
    for name, results in arms.items():
        accs = [r["metrics"]["test"]["acc"] for r in results]
        aucs = [r["metrics"]["test"]["auc"] for r in results]
        epochs = 0 if name.endswith("knn") else args.epochs
        delta = "" if name == "from scratch" else f" ({statistics.mean(aucs) - scratch_auc:+.4f})"
        lines.append(
            f"| {name} | {epochs} | {statistics.mean(accs):.4f} ± {sd(accs):.4f} | "
            f"{statistics.mean(aucs):.4f} ± {sd(aucs):.4f}{delta} | "
            f"{', '.join(f'{a:.4f}' for a in aucs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
