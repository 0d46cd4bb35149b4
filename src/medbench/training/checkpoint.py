"""Checkpoints and saved models: written atomically, read without unpickling code.

Two kinds of file live in a run folder:

- `checkpoint.pt`: everything needed to continue training (model, optimiser, EMA, best
  weights so far, RNG state, step, history, config). Rewritten after every epoch.
- `model.pt`: the selected weights plus what is needed to use them (architecture, input
  shape, task, class names, normalisation, calibration temperature). Read by `evaluate`,
  `predict`, `export` and ensembles.

Both are plain `torch.save` dicts of tensors and JSON-like values, loaded with
`torch.load(weights_only=True)`, which refuses any pickled object that could run code.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medbench.errors import MedbenchError
from medbench.utils.fsutil import atomic_write_bytes

CHECKPOINT_FORMAT = "medbench-checkpoint"
MODEL_FORMAT = "medbench-model"
FORMAT_VERSION = 1


def save(obj: dict[str, Any], path: str | Path) -> Path:
    """Write `obj` with torch.save to a temporary file and rename it into place.

    It is serialised in memory first: torch's zip writer, meeting a full disk, fails with
    an error of its own kind; one write of known size fails as a MedbenchError instead."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load(path: str | Path, expected_format: str | None = None) -> dict[str, Any]:
    """Load a medbench file safely; any problem is a one-line MedbenchError."""
    path = Path(path)
    if not path.is_file():
        raise MedbenchError(f"{path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise MedbenchError(f"{path} cannot be read (permission denied)")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise MedbenchError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or not written by "
            "torch.save); use a medbench run folder, model.pt or checkpoint.pt"
        )
    try:
        data = path.read_bytes()  # read once: checked, then loaded from memory
    except OSError as exc:
        raise MedbenchError(f"{path} cannot be read: {exc.strerror or exc}") from None
    check_integrity(path, data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
        detail = lines[0] if lines else "unsupported pickled object"
        raise MedbenchError(
            f"{path} holds objects other than tensors and plain values, which could execute "
            f"code when loaded, so medbench refuses it ({detail[:100]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise MedbenchError(
            f"{path} is not a readable checkpoint (corrupt or truncated?): {str(exc)[:160]}"
        ) from None
    return _check_format(obj, path, expected_format)


def check_integrity(path: Path, data: bytes | None = None) -> None:
    """Check every member of the file (its bytes `data` when already read) against the
    CRC-32 its zip archive stores: torch.load does not, so a file with flipped bytes loaded
    as good weights (and scored as a different model)."""
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except PermissionError:
        raise MedbenchError(f"{path} cannot be read (permission denied)") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise MedbenchError(
            f"{path} is corrupt or truncated ({str(exc)[:120]}); train or export it again"
        ) from None
    if bad is not None:
        raise MedbenchError(
            f"{path} is corrupt: its part {bad!r} fails the archive's checksum (CRC-32); "
            "the file was damaged after it was written: train or export it again"
        )


def _check_format(obj: Any, path: Path, expected_format: str | None) -> dict[str, Any]:
    """`obj`, checked: a MedbenchError unless it is a medbench file of `expected_format` and
    this version."""
    if not isinstance(obj, dict) or "format" not in obj:
        raise MedbenchError(f"{path} was not written by medbench (no 'format' entry)")
    if expected_format is not None and obj["format"] != expected_format:
        raise MedbenchError(f"{path} is a {obj['format']!r} file, expected {expected_format!r}")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise MedbenchError(
            f"{path} was written by a newer medbench (format version {obj.get('format_version')}); upgrade medbench"
        )
    if obj.get("format_version", 0) < FORMAT_VERSION:
        raise MedbenchError(
            f"{path} uses an older, unsupported format version {obj.get('format_version')}"
        )
    return obj


def resolve_model_file(path: str | os.PathLike[str]) -> Path:
    """A run folder, a model.pt or a checkpoint.pt -> the file to load weights from."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.pt", "checkpoint.pt"):
            if (path / name).is_file():
                return path / name
        raise MedbenchError(
            f"{path} holds no model.pt or checkpoint.pt; is it a medbench run folder?"
        )
    if not path.exists():
        raise MedbenchError(f"{path} does not exist")
    return path


# -- the training checkpoint: everything a resumed run continues from


@dataclass
class TrainingState:
    """The counters a run continues from: written after every round with the weights, the
    optimiser, EMA and loss-scaler states and the RNG state (see `save_training`)."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per round
    train_seconds: float = 0.0
    plan: dict[str, Any] = field(
        default_factory=dict
    )  # medbench.training.budget.BudgetPlanner.state
    selection: dict[str, Any] = field(
        default_factory=dict
    )  # medbench.training.selection.Selector.state


def save_training(
    path: str | Path,
    *,
    identity: dict[str, Any],
    config: dict[str, Any],
    parts: dict[str, Any],
    state: TrainingState,
    device: torch.device,
) -> None:
    """Write a training checkpoint. `parts` maps names to objects with a `state_dict`
    (model, optimizer, ema, grad_scaler); None for a part the run does not use."""
    save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": FORMAT_VERSION,
            "identity": identity,
            "config": config,
            **{name: None if p is None else p.state_dict() for name, p in parts.items()},
            **state.selection,
            "step": state.step,
            **state.plan,
            "history": state.history,
            "train_seconds": state.train_seconds,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
        path,
    )


def load_training(path: str | Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a training checkpoint and check that it belongs to the run `identity` describes."""
    obj = load(path, CHECKPOINT_FORMAT)
    if obj["identity"] != identity:
        raise MedbenchError(
            f"{path} belongs to another run ({_describe(obj['identity'], identity)}), not "
            f"{_describe(identity, obj['identity'])}; use a new run folder or the matching options"
        )
    return obj


def restore_training(
    obj: dict[str, Any], parts: dict[str, Any], device: torch.device
) -> TrainingState:
    """Load a checkpoint read by `load_training` into `parts` (as given to `save_training`)
    and the global RNG; returns the counters to continue from."""
    for name, part in parts.items():
        if part is not None and obj.get(name):  # an empty state: e.g. a disabled loss scaler
            part.load_state_dict(obj[name])
    torch.set_rng_state(obj["rng_cpu"])
    if device.type == "cuda" and obj.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(obj["rng_cuda"], device)
    return TrainingState(
        step=obj["step"],
        history=obj["history"],
        train_seconds=obj["train_seconds"],
        plan={k: obj[k] for k in ("total_steps", "round_steps", "planned")},
        selection={"best": obj["best"], "best_state": obj["best_state"]},
    )


def _describe(identity: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    text = f"{identity['model']} on {identity['dataset']} at {identity['size']}px"
    if other is None:
        return text
    differ = sorted(k for k in identity.keys() | other.keys() if identity.get(k) != other.get(k))
    return text + ", " + ", ".join(f"{k}={identity.get(k)!r}" for k in differ)
