"""`medbench pretrained`: the MedMNIST+ protocol (end-to-end, linear probe, k-NN) over
datasets x sizes x pretrained backbones x seeds."""

from __future__ import annotations

import argparse
import json
import sys

from medbench.cli.commands._options import add_data_dir, add_device
from medbench.errors import MedbenchError
from medbench.workflows.medmnist_plus import (
    INPUT_MODES,
    KNN_METRICS,
    REGIMES,
    BackboneSpec,
    PlusRecipe,
    PlusRow,
    format_rows,
    run_plus,
)

NAME = "pretrained"
HELP = "MedMNIST+ protocol: pretrained backbones end-to-end, by linear probe and by k-NN"
ORDER = 23
DESCRIPTION = (
    "Evaluate pretrained backbones by the MedMNIST+ protocol (Doerrich et al., Sci. Rep. 2025): "
    "images in the backbone's own mean/std, zero-padded to 224 px (or resized); end-to-end "
    "training and a linear probe by AdamW 1e-4, cosine schedule, batch 64, early stopping "
    "after 5 epochs; k-NN with k=11 on the training split's embeddings. Embeddings are cached "
    "(by model, weights hash, dataset, size, split, input transform), so probing more datasets "
    "or rerunning reuses them. Weights: 'hub' (online), a weights file or Hugging Face folder "
    "for a timm:<name> backbone (offline), or a medbench run folder for a medbench model."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", required=True, help="comma-separated dataset names")
    parser.add_argument(
        "--sizes", default="28", help="comma-separated image sizes (28,64,128,224; default 28)"
    )
    parser.add_argument(
        "--backbone",
        action="append",
        required=True,
        metavar="MODEL=WEIGHTS",
        help="a backbone and its weights, e.g. timm:resnet18=hub, "
        "timm:vit_small_patch16_224=weights/model.safetensors, resnet18=runs/.../seed0-abc "
        "(repeatable)",
    )
    parser.add_argument(
        "--regimes",
        default=",".join(REGIMES),
        help=f"comma-separated, among {', '.join(REGIMES)} (default: all three)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--input",
        default="pad",
        choices=INPUT_MODES,
        help="zero-pad to --target-size (MedMNIST+), resize, or none",
    )
    parser.add_argument("--target-size", type=int, default=224, help="default 224")
    parser.add_argument("--epochs", type=int, default=100, help="at most (default 100)")
    parser.add_argument("--patience", type=int, default=5, help="epochs (default 5)")
    parser.add_argument("--k", type=int, default=11, help="k-NN neighbours (default 11)")
    parser.add_argument(
        "--knn-metric",
        default="euclidean",
        choices=KNN_METRICS,
        help="euclidean, as MedMNIST+'s code, or cosine",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="embedding cache (default OUT/embeddings)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_data_dir(parser)
    add_device(parser)


def _backbones(items: list[str]) -> list[BackboneSpec]:
    specs = []
    for item in items:
        model, sep, weights = item.partition("=")
        if not sep or not model or not weights:
            raise MedbenchError(
                f"--backbone takes MODEL=WEIGHTS (e.g. timm:resnet18=hub), not {item!r}"
            )
        specs.append(BackboneSpec(model, weights))
    return specs


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MedbenchError(f"{flag} takes comma-separated integers, not {text!r}") from None


def _print_row(row: PlusRow) -> None:
    seed = "" if row.seed is None else f" seed {row.seed}"
    test = row.metrics.get("test", {})
    print(
        f"done {row.dataset}-{row.size} {row.model} {row.regime}{seed}: test ACC "
        f"{test.get('acc', float('nan')):.3f} AUC {test.get('auc', float('nan')):.3f}",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    from medbench.models.embeddings import EmbeddingCache

    if args.seeds < 1:
        raise MedbenchError("--seeds must be at least 1")
    recipe = PlusRecipe(
        target_size=args.target_size,
        input_mode=args.input,
        epochs=args.epochs,
        patience=args.patience,
        k=args.k,
        knn_metric=args.knn_metric,
    )
    results = run_plus(
        [d.strip() for d in args.datasets.split(",") if d.strip()],
        _ints(args.sizes, "--sizes"),
        _backbones(args.backbone),
        args.out,
        regimes=[r.strip() for r in args.regimes.split(",") if r.strip()],
        seeds=list(range(args.seeds)),
        recipe=recipe,
        data_dir=args.data_dir,
        cache=EmbeddingCache(args.cache_dir) if args.cache_dir else None,
        device=args.device,
        on_row=None if args.json else _print_row,
    )
    print(json.dumps(results.to_json(), indent=2) if args.json else format_rows(results.rows))
    if not args.json:
        print(
            f"embedding cache: {results.cache.get('hits', 0)} hits, "
            f"{results.cache.get('misses', 0)} computed; results in {args.out}/plus.json"
        )
    return 0
