"""Each augmentation policy vs `none`: same model, same fixed epochs, several seeds.

Writes the results table (mean +- std of test ACC/AUC over seeds) and the cost of each
policy (ms per batch of 128 at 28 px on this machine's CPU) between the markers of
docs/augmentation.md. Full run (the numbers in the docs):

    python benchmarks/augment_policies.py --data-dir ../shared/medmnist --epochs 20 --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from _common import REPO, SHARED_DATA, add_doc_arguments, publish, sd
from medbench.augment import POLICIES, BatchAugment
from medbench.config import TrainConfig
from medbench.data import load_dataset
from medbench.engine import train

DOC = REPO / "docs" / "augmentation.md"
SECTION = "augment_policies"


def policy_cost_ms(policy: str, dataset: str, channels: int, repeats: int = 20) -> float:
    """Median ms to augment one batch of 128 images at 28 px (CPU, 1 thread)."""
    x = torch.rand(128, channels, 28, 28)
    aug, g = BatchAugment(policy, dataset), torch.Generator()
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        aug(x, g.manual_seed(i))
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    ap.add_argument("--policies", nargs="+", default=[p for p in POLICIES if p != "auto"])
    ap.add_argument("--model", default="advanced_cnn")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/augment_policies")
    add_doc_arguments(ap, SECTION)
    args = ap.parse_args()
    policies = ["none"] + [p for p in args.policies if p != "none"]
    warnings.simplefilter("ignore")

    rows = []
    for dataset in args.datasets:
        data = load_dataset(dataset, 28, args.data_dir, progress=False)
        base = {}
        for policy in policies:
            accs, aucs, secs = [], [], []
            for seed in range(args.seeds):
                config = TrainConfig(
                    dataset=dataset,
                    model=args.model,
                    epochs=args.epochs,
                    seed=seed,
                    augment=policy,
                    data_dir=args.data_dir,
                    device="cpu",
                    run_dir=f"{args.out}/{dataset}-{policy}-seed{seed}",
                )
                r = train(config, data=data, progress=False).to_json()
                accs.append(r["metrics"]["test"]["acc"])
                aucs.append(r["metrics"]["test"]["auc"])
                secs.append(r["timing"]["train_seconds"])
                print(
                    f"{dataset} {policy} seed {seed}: test acc {accs[-1]:.4f} auc {aucs[-1]:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
            if policy == "none":
                base = {"acc": statistics.mean(accs), "auc": statistics.mean(aucs)}
            rows.append((dataset, policy, accs, aucs, secs, base))

    torch.set_num_threads(1)
    lines = [
        f"Model `{args.model}`, {args.epochs} epochs, seeds 0-{args.seeds - 1}, 28 px, CPU; "
        "test metrics of the epoch selected on validation AUC; mean +- std over seeds; "
        "delta = mean minus `none`'s mean.",
        "",
        "| dataset | policy | test ACC | test AUC | delta ACC | delta AUC | train s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, policy, accs, aucs, secs, base in rows:
        lines.append(
            f"| {dataset} | {policy} | {statistics.mean(accs):.4f} +- {sd(accs):.4f} | "
            f"{statistics.mean(aucs):.4f} +- {sd(aucs):.4f} | "
            f"{statistics.mean(accs) - base['acc']:+.4f} | {statistics.mean(aucs) - base['auc']:+.4f} | "
            f"{statistics.mean(secs):.0f} |"
        )
    lines += [
        "",
        "Cost of each policy, ms per batch of 128 at 28 px (CPU, 1 thread, median of 20):",
        "",
        "| policy | gray (pneumoniamnist) | RGB (pathmnist) |",
        "|---|---|---|",
    ]
    for policy in policies:
        lines.append(
            f"| {policy} | {policy_cost_ms(policy, 'pneumoniamnist', 1):.1f} | "
            f"{policy_cost_ms(policy, 'pathmnist', 3):.1f} |"
        )
    publish(lines, DOC, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
