"""`medbench transfer`: pretrain on MedMNIST datasets (or take pretrained weights), then
fine-tune, linear-probe or k-NN-probe on a target dataset."""

from __future__ import annotations

import argparse
import json

from medbench.cli.commands._options import (
    add_data_dir,
    add_size,
    add_training_options,
    base_config,
    config_overrides,
)
from medbench.workflows.transfer import KNN_K, TRANSFER_MODES, transfer

NAME = "transfer"
HELP = "pretrain on some datasets, then fine-tune / probe on another"
ORDER = 22
DESCRIPTION = (
    "Pretrain MODEL on each --pretrain-on dataset in turn (or start from --pretrained weights), "
    "then transfer to --dataset: 'full' fine-tuning (backbone at lr x --backbone-lr-scale), "
    "'linear-probe' (frozen backbone, head trained) or 'knn' (frozen embeddings, 11 nearest "
    "neighbours by cosine similarity, no training). Finished runs in --out are reused."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pretrain-on",
        default="",
        metavar="DATASETS",
        help="comma-separated datasets to pretrain on, in order (e.g. pneumoniamnist)",
    )
    parser.add_argument("--dataset", required=True, help="the target dataset")
    parser.add_argument(
        "--model", required=True, help="model name (see 'medbench models') or timm:<name>"
    )
    parser.add_argument(
        "--mode",
        choices=TRANSFER_MODES,
        help="how to use the pretrained backbone (default: --finetune, else full)",
    )
    add_size(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain-epochs", type=int, help="epochs per pretraining stage (default: --epochs)"
    )
    parser.add_argument(
        "--k", type=int, default=KNN_K, help=f"neighbours for --mode knn (default {KNN_K})"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the runs (default runs/transfer-<sources>-to-<dataset>-<model>-seed<N>)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_data_dir(parser)
    add_training_options(parser)


def run(args: argparse.Namespace) -> int:
    sources = [name.strip() for name in args.pretrain_on.split(",") if name.strip()]
    config = base_config(args, config_overrides(args))
    args.out = args.out or _default_out(args, sources)  # named by Ctrl-C's hint (medbench.cli)
    results = transfer(
        sources,
        config,
        args.out,
        mode=args.mode or config.finetune or "full",
        pretrain_epochs=args.pretrain_epochs,
        k=args.k,
        progress=False if args.quiet else None,
    )
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        for r in [*results["pretrain"], results["target"]]:
            print(_summary_line(r))
    return 0


def _summary_line(r: dict) -> str:
    t = r["metrics"]["test"]
    where = r.get("run_dir") or r.get("config", {}).get("run_dir")
    return (
        f"{r['dataset']['name']}/{r['model']['name']}: test ACC {t['acc']:.4f} "
        f"AUC {t['auc']:.4f} -> {where}"
    )


def _default_out(args: argparse.Namespace, sources: list[str]) -> str:
    name = args.model.replace(":", "-").replace("/", "-")
    return (
        f"runs/transfer-{'+'.join(sources) or 'weights'}-to-{args.dataset}-{name}-seed{args.seed}"
    )
