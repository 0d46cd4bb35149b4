"""Transfer learning: pretrained backbones, fine-tuning, linear probes, k-NN probes, and
MedMNIST-to-MedMNIST pretraining.

Three ways to use a pretrained backbone, as in the MedMNIST+ benchmark (Doerrich et al.
2024, "Rethinking model prototyping through the MedMNIST+ dataset collection"):

- `full` fine-tuning: every layer trains, the backbone at `lr * backbone_lr_scale`;
- `linear-probe`: the backbone is frozen (no gradients, and its batch-norm layers keep
  their pretrained running statistics: they stay in eval mode while the head trains);
- `knn`: no training; frozen, globally pooled embeddings and an 11-nearest-neighbour
  vote under cosine similarity (`knn_evaluate`).

Weights come from a medbench run (any dataset, same architecture), a timm weights file
(`.pth`/`.bin`/`.safetensors`, e.g. from the Hugging Face cache), or `hub` (timm's own
download, needs internet). Every tensor whose name and shape match is loaded; a first
convolution that differs only in input channels is folded or repeated (timm's
`adapt_input_conv`); the classifier head is re-initialised unless the source was trained
on the same dataset. The engine calls `prepare_pretrained` when `config.pretrained` is set.

`transfer` pretrains on one or more MedMNIST datasets and fine-tunes on a target. Several
source datasets are used *sequentially* (each stage starts from the previous one), not
pooled: their label spaces differ, so a pooled run would need one head per dataset.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medbench import checkpoint as ckpt
from medbench.config import TrainConfig
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.fsutil import atomic_write_json
from medbench.models.adapters import classifier_of, unwrap

FINETUNE_MODES = ("full", "linear-probe")
TRANSFER_MODES = ("full", "linear-probe", "knn")
KNN_K = 11
HUB = "hub"


# ----------------------------------------------------------------------------- loading


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
        return _medbench_source(ckpt.resolve_model_file(path), model_name)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return Source(load_file(str(path), device="cpu"), str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise MedbenchError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and zip errors of every kind
        raise MedbenchError(
            f"{path} is not a loadable weights file (only plain tensors are accepted): "
            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}"
        ) from None
    if isinstance(obj, dict) and "format" in obj:
        return _medbench_source(path, model_name)
    return Source(_plain_state_dict(obj, path), str(path))


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
    from medbench.models import TIMM_PREFIX

    if not model_name.startswith(TIMM_PREFIX):
        raise MedbenchError(
            f"--pretrained hub needs a timm model (timm:<name>), not {model_name}; "
            f"for medbench models pass a pretrained run folder"
        )
    import timm

    name = model_name[len(TIMM_PREFIX) :]
    try:
        hub_model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network, hub and missing-weights errors alike
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise MedbenchError(
            f"cannot get timm's pretrained weights for {name} (offline, or none published?): "
            f"{first}; download them where online and pass the file with --pretrained PATH"
        ) from None
    return Source(hub_model.state_dict(), f"timm hub ({name})")


def load_matching(model: nn.Module, source: Source, *, load_head: bool = False) -> LoadReport:
    """Load every tensor of `source` whose name and shape match `model` (in place).

    A 4-d weight that differs only in input channels (the first convolution) is adapted
    with timm's `adapt_input_conv`. The classifier is loaded only when `load_head` and its
    shapes match. Raises MedbenchError when nothing matches (another architecture).
    """
    from timm.models import adapt_input_conv

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
        src = state[name]
        if name.startswith(head_prefix) and not (load_head and src.shape == tensor.shape):
            report.head.append(name)
        elif src.shape == tensor.shape:
            new[name] = src.to(tensor.dtype)
            report.loaded.append(name)
        elif src.ndim == 4 and tensor.ndim == 4 and _only_channels_differ(src, tensor):
            new[name] = adapt_input_conv(tensor.shape[1], src, base_chans=src.shape[1]).to(
                tensor.dtype
            )
            report.adapted.append(name)
        else:
            report.skipped.append(name)
    report.unused = [k for k in state if k not in own]
    if not report.loaded:
        raise MedbenchError(
            f"no tensor of {source.description} matches the model's names and shapes; "
            f"are they weights of the same architecture?"
        )
    target.load_state_dict(new)
    return report


def _only_channels_differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]


def _module_name(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise MedbenchError(f"the classifier is not a submodule of {type(root).__name__}")


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


def prepare_pretrained(model: nn.Module, config: TrainConfig) -> dict[int, float] | None:
    """The engine's hook: load `config.pretrained` into `model`, freeze or scale the backbone.

    Returns id(parameter) -> learning-rate multiplier (backbone: `backbone_lr_scale`,
    head: 1.0). Tensors that could not be loaded, other than the head, are reported in
    one MedbenchWarning.
    """
    if config.finetune not in FINETUNE_MODES:
        raise MedbenchError(
            f"--finetune must be one of {', '.join(FINETUNE_MODES)}, not {config.finetune!r}"
        )
    if config.backbone_lr_scale < 0:
        raise MedbenchError("--backbone-lr-scale must not be negative")
    source = load_source(config.pretrained, config.model)
    report = load_matching(model, source, load_head=source.dataset == config.dataset)
    if report.skipped or report.missing:
        warnings.warn(report.summary(), MedbenchWarning, stacklevel=2)
    head_ids = {id(p) for p in head_parameters(model)}
    if config.finetune == "linear-probe":
        freeze_backbone(model)
        return {i: 1.0 for i in head_ids}
    return {
        id(p): 1.0 if id(p) in head_ids else config.backbone_lr_scale for p in model.parameters()
    }


# ----------------------------------------------------------------------------- k-NN probe


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, runtime, batch_size: int = 256) -> np.ndarray:
    """Globally pooled features `forward_head(forward_features(x), pre_logits=True)`,
    L2-normalised, for uint8 (N, H, W, C) images."""
    from medbench.inference import normalize, to_unit_float

    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_unit_float(images[start : start + batch_size], runtime))
        with runtime.autocast():
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        out.append(torch.nn.functional.normalize(f.float().flatten(1), dim=1).cpu())
    return torch.cat(out).numpy()


def knn_probabilities(
    reference: np.ndarray, reference_labels: np.ndarray, queries: np.ndarray, task: str, k: int
) -> np.ndarray:
    """Neighbour-vote probabilities: the share of the k most cosine-similar references in
    each class (multi-label: with each label). Embeddings must be L2-normalised."""
    k = min(k, len(reference))
    ref = torch.from_numpy(reference)
    if task.startswith("multi-label"):
        onehot = torch.from_numpy(reference_labels.astype(np.float32))
    else:
        y = torch.from_numpy(reference_labels.reshape(-1).astype(np.int64))
        onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).float()
    out = []
    for start in range(0, len(queries), 1024):
        sims = torch.from_numpy(queries[start : start + 1024]) @ ref.T
        idx = sims.topk(k, dim=1).indices
        out.append(onehot[idx].mean(1))
    return torch.cat(out).numpy()


def knn_evaluate(
    model_or_path: nn.Module | str | Path,
    data: Any,
    k: int = KNN_K,
    *,
    device: str = "auto",
) -> dict[str, Any]:
    """k-NN probe of a frozen backbone on `data` (a `medbench.data.MedMNISTData`): train
    split as the reference set, official ACC/AUC of neighbour-vote probabilities on val
    and test. `model_or_path`: a model, or a medbench run folder / model.pt."""
    from medbench import metrics
    from medbench.inference import labels_numpy, load_trained_model
    from medbench.models import count_parameters
    from medbench.runtime import resolve_runtime

    if k < 1:
        raise MedbenchError(f"k must be at least 1, not {k}")
    name = type(model_or_path).__name__
    if not isinstance(model_or_path, nn.Module):
        model_or_path, meta = load_trained_model(model_or_path)
        name = meta["model"]
    model = model_or_path
    runtime = resolve_runtime(device, "fp32", False)
    model.to(runtime.device)
    info = data.info
    channels = _input_channels(model)
    start = time.perf_counter()
    reference = embed(model, _match_channels(data.train.images, channels), runtime)
    ref_y = labels_numpy(data.train.labels)
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        s = data.split(split)
        probs = knn_probabilities(
            reference, ref_y, embed(model, _match_channels(s.images, channels), runtime),
            info.task, k,
        )  # fmt: skip
        if probs.shape[1] < info.n_classes:  # a class absent from the reference set
            probs = np.pad(probs, ((0, 0), (0, info.n_classes - probs.shape[1])))
        out[split] = metrics.evaluate(labels_numpy(s.labels), probs, info.task, info.label_names)
    seconds = time.perf_counter() - start
    n_params = count_parameters(model)
    return {
        "schema_version": 1,
        "status": "finished",
        "kind": "knn-probe",
        "k": k,
        "dataset": data.provenance(),
        "model": {"name": name, "n_params": n_params, "params_m": n_params / 1e6},
        "metrics": {"val": out["val"], "test": out["test"]},
        "timing": {"train_seconds": 0.0, "embed_seconds": seconds},
    }


def _input_channels(model: nn.Module) -> int | None:
    from medbench.models.adapters import InputAdapter

    if isinstance(model, InputAdapter):
        return model.in_channels
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _match_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Gray <-> RGB so a backbone trained on one kind of image can embed the other."""
    if channels is None or images.shape[-1] == channels:
        return images
    if channels == 3 and images.shape[-1] == 1:
        return images.expand(-1, -1, -1, 3)
    if channels == 1:
        return images.float().mean(-1, keepdim=True).round().to(torch.uint8)
    raise MedbenchError(
        f"cannot feed {images.shape[-1]}-channel images to a {channels}-channel model"
    )


# ----------------------------------------------------------------------------- MedMNIST -> MedMNIST


def train_or_reuse(config: TrainConfig, *, data: Any = None, progress: bool | None = False) -> dict:
    """Train `config` into its run folder, or return the results already there."""
    from medbench.engine import train

    results_file = Path(config.run_dir) / "results.json" if config.run_dir else None
    if results_file is not None and results_file.is_file():
        results = json.loads(results_file.read_text())
        if results.get("status") == "finished":
            return results
    return train(config, data=data, progress=progress, resume=True).to_json()


def transfer(
    pretrain_on: list[str],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    mode: str = "full",
    pretrain_epochs: int | None = None,
    k: int = KNN_K,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Pretrain `config.model` on each of `pretrain_on` in turn (starting from
    `config.pretrained`, if set), then transfer to `config.dataset` by `mode` (full,
    linear-probe or knn). Runs go to `out_dir/pretrain-<i>-<dataset>` and
    `out_dir/<mode>-<dataset>`; finished runs found there are reused. With no dataset to
    pretrain on, `config.pretrained` (a file, a run or "hub") is the backbone.
    Returns {"pretrain": [results...], "target": results}."""
    if mode not in TRANSFER_MODES:
        raise MedbenchError(
            f"transfer mode must be one of {', '.join(TRANSFER_MODES)}, not {mode!r}"
        )
    if not pretrain_on and not config.pretrained:
        raise MedbenchError("give datasets to pretrain on (--pretrain-on) or --pretrained weights")
    out_dir = Path(out_dir)
    previous, stages = config.pretrained, []
    for i, dataset in enumerate(pretrain_on):
        stage = dataclasses.replace(
            config,
            dataset=dataset,
            epochs=pretrain_epochs or config.epochs,
            pretrained=previous,
            finetune="full",
            run_dir=str(out_dir / f"pretrain-{i}-{dataset}"),
            model_options=dict(config.model_options),
        )
        stages.append(train_or_reuse(stage, progress=progress))
        previous = stage.run_dir
    final = dataclasses.replace(
        config,
        pretrained=previous,
        finetune="full" if mode == "knn" else mode,
        run_dir=str(out_dir / f"{mode}-{config.dataset}"),
        model_options=dict(config.model_options),
    )
    if mode != "knn":
        return {"pretrain": stages, "target": train_or_reuse(final, progress=progress)}
    from medbench.data import load_dataset
    from medbench.models import build_model

    data = load_dataset(config.dataset, config.size, config.data_dir, progress=bool(progress))
    model = build_model(
        config.model, data.info.n_channels, data.info.n_classes, config.size,
        **config.model_options,
    )  # fmt: skip
    prepare_pretrained(model, final)
    target = knn_evaluate(model, data, k, device=config.device)
    target["model"]["name"] = config.model
    target["pretrained"] = previous
    target["config"] = final.to_dict()
    atomic_write_json(Path(final.run_dir) / "results.json", target)
    return {"pretrain": stages, "target": target}
