"""Command-line options shared by train, benchmark and tune, mapped onto TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from medbench.config import (
    CLASS_BALANCE,
    DEVICES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SELECT_METRICS,
    TrainConfig,
    load_config_file,
    parse_duration,
)
from medbench.errors import MedbenchError


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder of MedMNIST npz files (default: $MEDBENCH_DATA_DIR, else ~/.medmnist as the medmnist package uses); "
        "point it at files you already have to work offline",
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field a user may want to set. Defaults are None so that
    a `--config` file can supply values and explicit flags still win."""
    g = parser.add_argument_group("training")
    g.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of training options (e.g. from 'medbench tune'); flags win",
    )
    g.add_argument(
        "--epochs", type=int, help="number of epochs (default 40 unless --time-budget is given)"
    )
    g.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="wall-clock budget per run, e.g. 90s, 10m: the schedule is planned to finish inside it",
    )
    g.add_argument("--batch-size", type=int)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--weight-decay", type=float)
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="cosine with warm-up (default) or the official MedMNIST multistep (x0.1 at 50%% and 75%%)",
    )
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0 disables)")
    g.add_argument(
        "--ema-decay", type=float, help="keep an exponential moving average of weights (e.g. 0.999)"
    )
    g.add_argument("--class-balance", choices=CLASS_BALANCE, help="class-imbalance handling")
    g.add_argument(
        "--augment", help="augmentation policy (none, basic, auto = per-dataset default)"
    )
    g.add_argument("--mixup", type=float, help="MixUp alpha (0 = off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0 = off)")
    g.add_argument(
        "--drop-path", type=float, help="stochastic depth rate for models that support it"
    )
    g.add_argument("--dropout", type=float, help="classifier dropout")
    g.add_argument(
        "--select-metric",
        choices=SELECT_METRICS,
        help="validation metric for model selection (default auc); last: keep the final "
        "weights, no selection (steadier when the validation split is tiny)",
    )
    g.add_argument(
        "--patience", type=int, help="stop after this many epochs without validation improvement"
    )
    g.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option (JSON value), e.g. width=1.5 or 'depths=[1,2,2,1]'; repeatable",
    )
    t = parser.add_argument_group("transfer learning")
    t.add_argument(
        "--pretrained",
        metavar="PATH",
        help="start from pretrained weights: a medbench run folder or model.pt, a timm weights "
        "file, or 'hub' for timm's own weights (needs internet)",
    )
    t.add_argument(
        "--finetune",
        choices=("full", "linear-probe"),
        help="with --pretrained: train all layers (full) or only the head (linear-probe)",
    )
    t.add_argument(
        "--backbone-lr-scale",
        type=float,
        help="with --pretrained: backbone learning rate = lr x this (default 0.1)",
    )
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", choices=DEVICES, help="auto (default): CUDA, else MPS, else CPU")
    r.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (default): bf16 on CPUs with native bf16, else fp32 (GPUs too: measured faster for small images)",
    )
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)


_FLAG_TO_FIELD = {"time_budget": "time_budget_seconds"}


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values given by `--config` and flags (flags win)."""
    values: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(args).items():
        field = _FLAG_TO_FIELD.get(key, key)
        if (
            value is None
            or field not in fields
            or field in ("dataset", "model", "seed", "size", "model_options")
        ):
            continue
        values[field] = parse_duration(value) if field == "time_budget_seconds" else value
    if values.get("grad_clip") == 0:
        values["grad_clip"] = None
    options = dict(values.get("model_options") or {})
    for item in getattr(args, "model_option", []) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MedbenchError(f"--model-option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    if options:
        values["model_options"] = options
    return values


def base_config(args: argparse.Namespace, values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a tune or search starts from: `values` (from `config_overrides`)
    plus the dataset, model, size, seed and data folder given on the command line."""
    return TrainConfig.from_dict(
        {
            **values,
            "dataset": args.dataset,
            "model": args.model,
            "size": args.size,
            "seed": args.seed,
            "data_dir": args.data_dir,
        }
    )
