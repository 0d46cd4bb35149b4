"""Training configuration: one dataclass, readable from and writable to JSON.

`medbench train`, `medbench benchmark` and `medbench tune` all end in a `TrainConfig`;
`--config FILE` reads the keys of a JSON file (e.g. the best trial of a tuning study)
over the defaults, and explicit command-line flags win over the file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

OPTIMIZERS = ("adamw", "sgd", "adam")
SCHEDULES = ("cosine", "multistep", "constant")
CLASS_BALANCE = ("none", "weighted_loss", "sampler")
SELECT_METRICS = ("auc", "acc", "loss", "last")  # "last": the final weights, no selection
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SEED_LIMIT = 2**32  # numpy and torch take seeds in [0, 2**32)


@dataclass
class TrainConfig:
    """Everything that decides a training run. Defaults are medbench's tuned recipe."""

    dataset: str
    model: str
    size: int = 28
    seed: int = 0
    # Length: a fixed epoch count, or a wall-clock budget that plans the epoch count.
    epochs: int | None = None
    time_budget_seconds: float | None = None
    batch_size: int | None = None  # None: 128, or 32 for training splits under 2,000 images
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float | None = 2.0
    ema_decay: float | None = None
    class_balance: str = "none"
    augment: str = "auto"
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path: float | None = None
    dropout: float | None = None
    select_metric: str = "auc"
    patience: int | None = None
    collapse_margin: float = 0.15
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    num_workers: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)
    # Transfer learning: start from pretrained weights (a medbench run/model.pt, a timm
    # weights file, or "hub" for timm's own weights where the machine is online).
    pretrained: str | None = None
    finetune: str = "full"  # "full" (all layers) or "linear-probe" (frozen backbone)
    backbone_lr_scale: float = 0.1  # backbone learning rate = lr * this, when pretrained
    # Where: the data folder (None = medmnist's cache) and the run folder.
    data_dir: str | None = None
    run_dir: str | None = None
    # A finished run keeps model.pt; its checkpoint.pt (optimiser state, best weights so
    # far: ~180 MB for ResNet-18) is deleted unless asked to keep it.
    keep_checkpoint: bool = False
    # A user's own model (file.py:fn, module:fn, plugin): the SHA-256 prefix of its source
    # file, set by `validate`; None for medbench's and timm's models. Part of the identity.
    model_source_hash: str | None = None

    @property
    def label(self) -> str:
        """How every line medbench prints names this run: dataset/model/seedN, a file
        model by its short name (my_net:build, not its path)."""
        from medbench.models.user import model_label

        return f"{self.dataset}/{model_label(self.model)}/seed{self.seed}"

    def validate(self) -> TrainConfig:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise MedbenchError(msg)

        check_field_types(self.to_dict())
        # Imported here: the model zoo (torch, timm) is only needed once a config is checked.
        from medbench.models.registry import model_source

        # A file model's path made absolute, and the hash of the source it trains now (an
        # edit since the config was planned is refused).
        self.model, self.model_source_hash = model_source(self.model, self.model_source_hash)
        check(
            self.size in (28, 64, 128, 224), f"--size must be 28, 64, 128 or 224, not {self.size}"
        )
        check(
            0 <= self.seed < SEED_LIMIT,
            f"--seed must be between 0 and {SEED_LIMIT - 1} (what numpy and torch accept), "
            f"not {self.seed}",
        )
        check(
            self.epochs is None or self.epochs >= 1,
            f"--epochs must be at least 1, not {self.epochs}",
        )
        check(
            self.time_budget_seconds is None or self.time_budget_seconds > 0,
            "--time-budget must be positive",
        )
        check(
            self.batch_size is None or self.batch_size >= 1,
            f"--batch-size must be at least 1, not {self.batch_size}",
        )
        check(self.lr > 0, f"--lr must be positive, not {self.lr}")
        check(self.weight_decay >= 0, "--weight-decay must not be negative")
        check(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, "--ema-decay must be in (0, 1)")
        check(
            not (self.patience and self.select_metric == "last"),
            "--patience stops when validation stops improving; --select-metric last keeps the "
            "final weights and cannot be combined with it",
        )
        check(
            self.mixup >= 0 and self.cutmix >= 0, "--mixup/--cutmix strengths must not be negative"
        )
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("class-balance", self.class_balance, CLASS_BALANCE),
            ("select-metric", self.select_metric, SELECT_METRICS),
            ("device", self.device, DEVICES),
            ("precision", self.precision, PRECISIONS),
        ):
            check(value in allowed, f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedbenchError(
                f"unknown config keys: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        check_field_types(data)
        return cls(**data)


# What each annotation accepts, as the error message names it. bool is an int to Python but
# not a count, and JSON writes 2.0 as a float: an int field takes neither.
# numbers.Integral and Real take numpy's scalars too (a planned epoch count may be one).
_KINDS: dict[type, tuple[str, typing.Callable[[Any], bool]]] = {
    int: ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    dict: ("a JSON object", lambda v: isinstance(v, dict)),
}


@functools.cache
def _field_kinds() -> dict[str, tuple[type, bool]]:
    """Each TrainConfig field's base type and whether it may be None, from its annotation."""
    kinds = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else hint
        kinds[name] = (typing.get_origin(base) or base, optional)
    return kinds


def check_field_types(values: dict[str, Any]) -> None:
    """A MedbenchError naming the first TrainConfig key in `values` whose value has the
    wrong type (e.g. a string epoch count in a --config file)."""
    kinds = _field_kinds()
    for key, value in values.items():
        if key not in kinds:
            continue
        base, optional = kinds[key]
        what, accepts = _KINDS[base]
        if value is None and optional:
            continue
        if not accepts(value):
            raise MedbenchError(
                f"config key {key} must be {what}{' or null' if optional else ''}, "
                f"not {repr(value)[:60]}"
            )


RECIPES_DIR = Path(__file__).with_name("recipes")


def recipe_names() -> list[str]:
    """The named recipes shipped with medbench (`--config official-3d`): the official
    MedMNIST experiments' training protocols, see docs/training.md and docs/3d.md."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (a flat dict of TrainConfig keys; a tuning result's
    `"config"` entry is also accepted), or a named recipe of `recipe_names()` when no
    file of that name exists."""
    path = Path(path)
    if not path.exists() and str(path) in recipe_names():
        path = RECIPES_DIR / f"{path}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedbenchError(
            f"config file {path} does not exist (named recipes: {', '.join(recipe_names())})"
        ) from None
    except (OSError, ValueError) as exc:
        raise MedbenchError(f"config file {path} is not readable JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise MedbenchError(f"config file {path} must hold a JSON object of training options")
    # A recipe, not a run: the source hash a run recorded is the next run's to compute.
    data.pop("model_source_hash", None)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MedbenchError(f"config file {path} has unknown keys: {', '.join(unknown)}")
    try:
        check_field_types(data)
    except MedbenchError as exc:
        raise MedbenchError(f"{exc} (in config file {path})") from None
    return data


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '10m' -> 600.0, '1.5h' -> 5400.0."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise MedbenchError(f"cannot read duration {text!r}; write e.g. 90s, 10m or 1.5h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# Keys that do not change what a run learns (or, for the time budget, are assigned per cell
# when it is claimed), so they are not part of a cell's identity.
NOT_IDENTITY = (
    "dataset",
    "model",
    "size",
    "seed",
    "data_dir",
    "run_dir",
    "device",
    "num_workers",
    "time_budget_seconds",
)


def config_hash(config: TrainConfig) -> str:
    """A short hash of everything in `config` that decides what a run learns."""
    identity = {k: v for k, v in config.to_dict().items() if k not in NOT_IDENTITY}
    if identity.get("model_source_hash") is None:
        identity.pop("model_source_hash", None)  # hashes from before the field stay the same
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
