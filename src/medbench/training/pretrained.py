"""Pretrained weights into a model: read them, load what matches, freeze or scale the backbone.

Weights come from a medbench run (any dataset, same architecture), a timm weights file
(`.pth`/`.bin`/`.safetensors`, e.g. from the Hugging Face cache), or `hub` (timm's own
download, needs internet). Every tensor whose name and shape match is loaded; a first
convolution that differs only in input channels is folded or repeated (timm's
`adapt_input_conv`); the classifier head is re-initialised unless the source was trained
on the same dataset. The engine calls `prepare_pretrained` when `config.pretrained` is set.

Two ways to train from them, as in the MedMNIST+ benchmark (Doerrich et al. 2024):
`full` fine-tuning (every layer trains, the backbone at `lr * backbone_lr_scale`) and
`linear-probe` (the backbone is frozen: no gradients, and its batch-norm layers keep their
pretrained running statistics). The workflows that use them (pretrain -> fine-tune, the
k-NN probe) are in `medbench.workflows.transfer`; this module knows nothing of training.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file as load_safetensors
from timm.models import adapt_input_conv
from torch import nn

from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import TIMM_PREFIX
from medbench.models.adapters import classifier_of, unwrap
from medbench.training import checkpoint as ckpt
from medbench.training.config import TrainConfig

FINETUNE_MODES = ("full", "linear-probe")
HUB = "hub"
HASH_CHUNK = 1 << 20


@dataclass
class LoadReport:
    """What `load_matching` did, tensor name by tensor name."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # first conv: input channels folded
    head: list[str] = field(default_factory=list)  # classifier tensors left at their init
    skipped: list[str] = field(default_factory=list)  # name found, shape differs
    missing: list[str] = field(default_factory=list)  # in the model, not in the source
    unused: list[str] = field(default_factory=list)  # in the source, not in the model

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        for name in ("adapted", "head", "skipped", "missing", "unused"):
            items = getattr(self, name)
            if items:
                shown = ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")
                parts.append(f"{name} {len(items)} ({shown})")
        return "; ".join(parts)


@dataclass
class Source:
    """Pretrained weights and what is known of where they come from."""

    state_dict: dict[str, torch.Tensor]
    description: str
    dataset: str | None = None  # the medbench dataset they were trained on, if any
    sha256: str = ""  # of the file read; of the tensors where there is no file (the hub)

    def record(self) -> dict[str, str]:
        """What a run's results say of the weights it started from."""
        return {
            "source": self.description,
            "sha256": self.sha256 or state_dict_sha256(self.state_dict),
        }


# ----------------------------------------------------------------------------- reading


def load_source(pretrained: str, model_name: str) -> Source:
    """Read `pretrained` (a medbench run/model.pt, a timm weights file, or "hub")."""
    if pretrained == HUB:
        return _hub_source(model_name)
    path = Path(pretrained)
    if not path.exists():
        raise MedbenchError(
            f"pretrained weights {path} do not exist; give a medbench run folder, a model.pt, "
            f"a timm weights file, or 'hub'"
        )
    if path.is_dir():
        file = ckpt.resolve_model_file(path)
        source = _medbench_source(file, model_name)
    else:
        file, source = path, _file_source(path, model_name)
    source.sha256 = weights_sha256(file)  # `sha256sum FILE` gives the same
    return source


def _file_source(path: Path, model_name: str) -> Source:
    """A weights file: safetensors, a plain (possibly nested) state dict, or a medbench
    model.pt."""
    if path.suffix == ".safetensors":
        try:
            return Source(load_safetensors(str(path), device="cpu"), str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise MedbenchError(f"{path} is not a readable safetensors file: {exc}") from None
    if zipfile.is_zipfile(path):  # torch.save's format: check its CRCs as medbench's own
        ckpt.check_integrity(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and zip errors of every kind
        raise MedbenchError(
            f"{path} is not a loadable weights file (only plain tensors are accepted): "
            f"{_first_line(exc)}"
        ) from None
    if isinstance(obj, dict) and "format" in obj:
        return _medbench_source(path, model_name)
    return Source(_plain_state_dict(obj, path), str(path))


def _first_line(exc: Exception) -> str:
    """An exception's first line, shortened; its type where it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _medbench_source(file: Path, model_name: str) -> Source:
    obj = ckpt.load(file)
    if obj["format"] != ckpt.MODEL_FORMAT:
        raise MedbenchError(
            f"{file} is a {obj['format']!r} file; point --pretrained at a finished run's model.pt"
        )
    if obj["model"] != model_name:
        raise MedbenchError(
            f"{file} holds a {obj['model']} model but this run builds {model_name}; "
            f"pretrain the same architecture or use --model {obj['model']}"
        )
    return Source(obj["state_dict"], str(file), dataset=obj.get("dataset"))


def _plain_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A state dict, possibly nested as timm/torchvision checkpoints nest it."""
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedbenchError(f"{path} holds no state dict of tensors; is it a weights file?")
    # DataParallel checkpoints prefix every name with "module."
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def _hub_source(model_name: str) -> Source:
    if not model_name.startswith(TIMM_PREFIX):
        raise MedbenchError(
            f"--pretrained hub needs a timm model (timm:<name>), not {model_name}; "
            f"for medbench models pass a pretrained run folder"
        )
    name = model_name[len(TIMM_PREFIX) :]
    try:
        hub_model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network, hub and missing-weights errors alike
        raise MedbenchError(
            f"cannot get timm's pretrained weights for {name} (offline, or none published?): "
            f"{_first_line(exc)}; download them where online and pass the file with "
            f"--pretrained PATH"
        ) from None
    return Source(hub_model.state_dict(), f"timm hub ({name})")


# ----------------------------------------------------------------------------- loading


def load_matching(model: nn.Module, source: Source, *, load_head: bool = False) -> LoadReport:
    """Load every tensor of `source` whose name and shape match `model` (in place).

    A 4-d weight that differs only in input channels (the first convolution) is adapted
    with timm's `adapt_input_conv`. The classifier is loaded only when `load_head` and its
    shapes match. Raises MedbenchError when nothing matches (another architecture).
    """
    target = unwrap(model)
    state = dict(source.state_dict)
    if state and all(k.startswith("backbone.") for k in state):  # saved with an InputAdapter
        state = {k[len("backbone.") :]: v for k, v in state.items()}
    head_prefix = _module_name(target, classifier_of(target)) + "."
    report = LoadReport(source.description)
    own = target.state_dict()
    new = dict(own)
    for name, tensor in own.items():
        if name not in state:
            report.missing.append(name)
            continue
        is_head = name.startswith(head_prefix)
        kind, value = _match(tensor, state[name], is_head=is_head, load_head=load_head)
        getattr(report, kind).append(name)
        if value is not None:
            new[name] = value
    report.unused = [k for k in state if k not in own]
    if not report.loaded:
        raise MedbenchError(
            f"no tensor of {source.description} matches the model's names and shapes; "
            f"are they weights of the same architecture?"
        )
    target.load_state_dict(new)
    return report


def _match(
    tensor: torch.Tensor, src: torch.Tensor, *, is_head: bool, load_head: bool
) -> tuple[str, torch.Tensor | None]:
    """How a source tensor fits the model's: the LoadReport list it goes to ("loaded",
    "adapted", "head" or "skipped") and the value to load, if any."""
    if is_head and not (load_head and src.shape == tensor.shape):
        return "head", None
    if src.shape == tensor.shape:
        return "loaded", src.to(tensor.dtype)
    if src.ndim == 4 and tensor.ndim == 4 and _only_channels_differ(src, tensor):
        adapted = adapt_input_conv(tensor.shape[1], src, base_chans=src.shape[1])
        return "adapted", adapted.to(tensor.dtype)
    return "skipped", None


def _only_channels_differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]


def _module_name(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise MedbenchError(f"the classifier is not a submodule of {type(root).__name__}")


# ----------------------------------------------------------------------------- training modes


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(classifier_of(model).parameters())


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.train(False)  # a frozen backbone's BN keeps its pretrained statistics


def freeze_backbone(model: nn.Module) -> None:
    """Linear probe: no gradients outside the classifier, backbone BN always in eval mode."""
    head = classifier_of(model)
    head_ids = {id(p) for p in head.parameters()}
    head_modules = {id(m) for m in head.modules()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_ids)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and id(m) not in head_modules:
            m.register_forward_pre_hook(_keep_eval)


def prepare_pretrained(
    model: nn.Module, config: TrainConfig
) -> tuple[dict[int, float], dict[str, str]]:
    """The engine's hook: load `config.pretrained` into `model`, freeze or scale the backbone.

    Returns id(parameter) -> learning-rate multiplier (backbone: `backbone_lr_scale`,
    head: 1.0), and the weights' record for the run's results (source and SHA-256).
    Tensors that could not be loaded, other than the head, are reported in one
    MedbenchWarning.
    """
    if config.finetune not in FINETUNE_MODES:
        raise MedbenchError(
            f"--finetune must be one of {', '.join(FINETUNE_MODES)}, not {config.finetune!r}"
        )
    if config.backbone_lr_scale < 0:
        raise MedbenchError("--backbone-lr-scale must not be negative")
    if config.pretrained is None:  # the engine calls this only when it is set
        raise TypeError("prepare_pretrained needs config.pretrained: the weights to load")
    source = load_source(config.pretrained, config.model)
    report = load_matching(model, source, load_head=source.dataset == config.dataset)
    if report.skipped or report.missing:
        warnings.warn(report.summary(), MedbenchWarning, stacklevel=2)
    head_ids = {id(p) for p in head_parameters(model)}
    if config.finetune == "linear-probe":
        freeze_backbone(model)
        return {i: 1.0 for i in head_ids}, source.record()
    scales = {
        id(p): 1.0 if id(p) in head_ids else config.backbone_lr_scale for p in model.parameters()
    }
    return scales, source.record()


# ----------------------------------------------------------------------------- timm weights


def weights_sha256(path: str | Path) -> str:
    """The SHA-256 of a weights file, or of a folder's files (names and bytes, sorted):
    what results record so two runs can tell whether they used the same weights."""
    path = Path(path)
    if not path.exists():
        raise MedbenchError(f"weights {path} do not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The SHA-256 of a state dict's names and values (for weights that are not a file)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def create_timm_pretrained(name: str, weights: str, **kwargs: Any) -> tuple[nn.Module, str, str]:
    """A timm model `name` with pretrained weights from `weights`: "hub" (timm's download),
    a weights file, or a folder in Hugging Face layout (model.safetensors or
    pytorch_model.bin), read offline through timm's `pretrained_cfg_overlay`, so timm's own
    filters (first-conv channels, classifier size) apply as for hub weights.
    Returns (model, where the weights came from, their SHA-256)."""
    if weights == HUB:
        overlay, source = None, f"timm hub ({name})"
    else:
        path = Path(weights)
        if not path.exists():
            raise MedbenchError(
                f"pretrained weights {path} do not exist; give a weights file, a folder "
                f"holding model.safetensors or pytorch_model.bin, or 'hub'"
            )
        overlay = (
            dict(source="local-dir", file=str(path)) if path.is_dir() else dict(file=str(path))
        )
        source = str(path)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # network, hub, file-format and shape errors alike
        hint = "" if overlay else "; download them where online and pass the file instead of hub"
        raise MedbenchError(
            f"cannot load pretrained weights for timm model {name} from {source}: "
            f"{_first_line(exc)}{hint}"
        ) from None
    sha = state_dict_sha256(model.state_dict()) if overlay is None else weights_sha256(weights)
    return model, source, sha
