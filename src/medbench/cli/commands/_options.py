"""Command-line options shared by the commands, and their mapping onto the Python API.

Choices are the library's own constants, so a flag accepts exactly what the API does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from medbench.data.catalogue import SIZES
from medbench.data.locations import DATA_DIR_ENV
from medbench.errors import MedbenchError
from medbench.training.config import (
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
from medbench.training.pretrained import FINETUNE_MODES
from medbench.training.tracking import DEFAULT_EXPERIMENT, LOGGERS, MLFLOW_URI_ENV, Tracking
from medbench.workflows.studies import METRICS

DEFAULT_SIZE = TrainConfig.size  # the dataclass default
# TrainConfig fields that say which run this is: set from their own flags by base_config.
_IDENTITY = ("dataset", "model", "seed", "size", "model_options")
_FLAG_TO_FIELD = {"time_budget": "time_budget_seconds"}
# What base_config takes from the command line over a --config file (each where given).
_COMMAND_LINE_IDENTITY = ("dataset", "model", "size", "seed", "data_dir")


def add_data_dir(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"folder of MedMNIST npz files (default: ${DATA_DIR_ENV}, else ~/.medmnist as the "
        "medmnist package uses); point it at files you already have to work offline",
    )


def add_size(
    parser: argparse._ActionsContainer,
    help: str = f"image size in pixels (default {DEFAULT_SIZE})",
    default: int | None = DEFAULT_SIZE,
) -> None:
    parser.add_argument("--size", type=int, default=default, choices=SIZES, help=help)


def add_device(
    parser: argparse._ActionsContainer, *, default: str | None = "auto", help: str | None = None
) -> None:
    parser.add_argument("--device", default=default, choices=DEVICES, help=help)


def add_precision(
    parser: argparse._ActionsContainer, *, default: str | None = "auto", help: str | None = None
) -> None:
    parser.add_argument("--precision", default=default, choices=PRECISIONS, help=help)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field a user may want to set. Defaults are None so that
    a `--config` file can supply values and explicit flags still win."""
    g = parser.add_argument_group("training")
    g.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of training options (e.g. from 'medbench tune'), or a named recipe: official (MedMNIST's 2D protocol), official-3d, official-3d-shape; flags win",
    )
    _add_length_options(g)
    _add_recipe_options(g)
    _add_transfer_options(parser.add_argument_group("transfer learning"))
    r = parser.add_argument_group("runtime")
    add_device(r, default=None, help="auto (default): CUDA, else MPS, else CPU")
    add_precision(
        r,
        default=None,
        help="auto (default): bf16 on CPUs with native bf16, else fp32 (GPUs too: measured "
        "faster for small images)",
    )
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)
    r.add_argument(
        "--keep-checkpoint",
        action="store_true",
        default=None,
        help="keep checkpoint.pt once the run has finished (default: removed; model.pt holds "
        "what evaluate, predict and export need)",
    )
    add_tracking_options(parser.add_argument_group("tracking"))


def add_tracking_options(t: argparse._ActionsContainer) -> None:
    """--log and where it logs to (medbench.training.tracking); off unless --log is given."""
    t.add_argument(
        "--log",
        metavar="TRACKERS",
        help=f"also log each run to {', '.join(LOGGERS)} (comma-separated; default: the run "
        "folder only)",
    )
    t.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help=f"MLflow tracking URI, e.g. http://127.0.0.1:5000 or sqlite:///mlflow.db "
        f"(default ${MLFLOW_URI_ENV}, else MLflow's own default)",
    )
    t.add_argument(
        "--log-experiment",
        metavar="NAME",
        help=f"MLflow experiment and W&B project (default {DEFAULT_EXPERIMENT})",
    )
    t.add_argument(
        "--log-dir",
        metavar="DIR",
        help="TensorBoard: event files in DIR/<run name>/ (default RUN/tensorboard/)",
    )


def tracking_options(args: argparse.Namespace) -> Tracking | None:
    """What `add_tracking_options`' flags ask for; None when --log is not given."""
    return Tracking.from_flags(
        getattr(args, "log", None),
        getattr(args, "mlflow_uri", None),
        getattr(args, "log_dir", None),
        getattr(args, "log_experiment", None),
    )


def _add_length_options(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--epochs", type=int, help="number of epochs (default 40 unless --time-budget is given)"
    )
    g.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="wall-clock budget per run, e.g. 90s, 10m: the schedule is planned to finish inside it",
    )


def _add_recipe_options(g: argparse._ActionsContainer) -> None:
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
        help="validation metric for model selection (default auc); loss: the lowest "
        "validation loss; last: keep the final weights, no selection (steadier when the "
        "validation split is tiny)",
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


def _add_transfer_options(t: argparse._ActionsContainer) -> None:
    t.add_argument(
        "--pretrained",
        metavar="PATH",
        help="start from pretrained weights: a medbench run folder or model.pt, a timm weights "
        "file, or 'hub' for timm's own weights (needs internet)",
    )
    t.add_argument(
        "--finetune",
        choices=FINETUNE_MODES,
        help="with --pretrained: train all layers (full) or only the head (linear-probe)",
    )
    t.add_argument(
        "--backbone-lr-scale",
        type=float,
        help="with --pretrained: backbone learning rate = lr x this (default 0.1)",
    )


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values given by `--config` and flags (flags win)."""
    values: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    values.update(_flag_values(args))
    if values.get("grad_clip") == 0:
        values["grad_clip"] = None
    options = {
        **(values.get("model_options") or {}),
        **parse_model_options(getattr(args, "model_option", None) or []),
    }
    if options:
        values["model_options"] = options
    return values


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields (but the run's identity) that flags gave a value."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(_IDENTITY)
    values = {}
    for key, value in vars(args).items():
        field = _FLAG_TO_FIELD.get(key, key)
        if value is not None and field in fields:
            values[field] = parse_duration(value) if field == "time_budget_seconds" else value
    return values


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """`--model-option KEY=VALUE` items as a dict; VALUE is JSON where it parses as JSON."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MedbenchError(f"--model-option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def base_config(args: argparse.Namespace, values: dict[str, Any], **more: Any) -> TrainConfig:
    """The TrainConfig of `values` (from `config_overrides`) with the dataset, model, size,
    seed and data folder the command line gives over them (each where given, else from
    `--config`), and `more` over all."""
    given = (getattr(args, key, None) for key in _COMMAND_LINE_IDENTITY)
    identity = {k: v for k, v in zip(_COMMAND_LINE_IDENTITY, given, strict=True) if v is not None}
    merged = {**values, **identity, **more}
    for key, see in (("dataset", "medbench datasets"), ("model", "medbench models")):
        if not merged.get(key):
            raise MedbenchError(
                f"say which {key} to train: --{key} NAME (see '{see}') "
                f"or a --config file with a '{key}' key"
            )
    return TrainConfig.from_dict(merged)


# ----------------------------------------------------------------------------- tune, search


def add_study_target(
    parser: argparse.ArgumentParser, kind: str, *, model_help: str, required: bool
) -> None:
    """What a `kind` (tune or search) study is of, and how many trials it should have."""
    parser.add_argument("--dataset", required=required, help="MedMNIST dataset, e.g. breastmnist")
    parser.add_argument("--model", required=required, help=model_help)
    add_size(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of every trial and the sampler")
    parser.add_argument(
        "--out", metavar="DIR", help=f"output folder (default runs/{kind}-<dataset>-<model>)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        required=required,
        help="finished trials the study should have in total (existing ones count)",
    )
    parser.add_argument(
        "--metric", choices=METRICS, default="auc", help="validation metric to maximise"
    )


def add_study_options(parser: argparse.ArgumentParser, kind: str) -> None:
    """Where a `kind` study lives and how its workers share it; the data folder and the
    training options every trial shares."""
    g = parser.add_argument_group("study")
    g.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the study database, e.g. postgresql://host/db "
        "(default sqlite in --out)",
    )
    g.add_argument(
        "--study", metavar="NAME", help=f"study name (default {kind}-<dataset>-<size>-<model>)"
    )
    g.add_argument(
        "--timeout", metavar="DURATION", help="start no new trial after this long, e.g. 2h"
    )
    g.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a trial silent for 2 heartbeats is taken as dead and retried (default 60)",
    )
    g.add_argument("--quiet", action="store_true", help="no per-trial lines")
    add_data_dir(parser)
    add_training_options(parser)


def study_arguments(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The keyword arguments tune() and search() share, from `add_study_*`'s flags."""
    return {
        "out_dir": study_out_dir(args, kind),
        "metric": args.metric,
        "storage": args.storage,
        "study_name": args.study,
        "heartbeat_seconds": args.heartbeat,
        "timeout_seconds": parse_duration(args.timeout) if args.timeout else None,
        "progress": not args.quiet,
        "tracking": tracking_options(args),
    }


def study_out_dir(args: argparse.Namespace, kind: str) -> str:
    """The folder a `kind` study keeps its database and trials in: --out, else its default."""
    return args.out or f"runs/{kind}-{args.dataset}-{args.model.replace(':', '-')}"
