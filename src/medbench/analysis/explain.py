"""Explanations of a trained model's test predictions: saliency maps and their faithfulness.

Two methods, each from a maintained library rather than written here:

- `gradcam`: Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep
  networks via gradient-based localization") from pytorch-grad-cam, on a target layer chosen
  by `choose_target_layer`;
- `occlusion`: the drop in the class probability when a square patch is replaced by the
  image's mean (Zeiler & Fergus 2014), gradient-free, from captum.

Faithfulness is the deletion and insertion AUC of Petsiuk et al. 2018 ("RISE: randomized
input sampling for explanation of black-box models", BMVC): the most salient pixels first
are removed (set to the image's mean) or inserted (into a blurred copy), and the target
class's probability is integrated over the fraction of pixels changed. A faithful map has a
low deletion AUC and a high insertion AUC; a random saliency map is the chance level.

This module holds the numbers: the target layer, the maps, the faithfulness AUCs and their
summary, and the result dataclasses. `medbench.analysis.explain_files` writes them (the CSV
tables, the gallery figures, the markdown and HTML report) and runs the whole explanation.

    >>> from medbench.analysis.explain_files import explain_run
    >>> result = explain_run("runs/breastmnist-28/resnet18/seed0-...", "explain-out")
    >>> result.summary_rows()   # deletion / insertion AUC per method, random included
"""

from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbench.data import load_dataset
from medbench.errors import MedbenchError
from medbench.models import model_spatial_dims
from medbench.models.adapters import FeatureModel
from medbench.runs.results import recorded_data_dir
from medbench.scoring import metrics
from medbench.training.inference import is_multilabel, load_trained_model, normalize, to_unit_float
from medbench.utils.runtime import Runtime, resolve_runtime

METHODS = ("gradcam", "occlusion")
RANDOM = "random"  # the chance-level saliency every method is compared with
DEFAULT_PER_CLASS = 3
DEFAULT_STEPS = 28


# --------------------------------------------------------------------------- target layer


@dataclass(frozen=True)
class TargetLayer:
    """The layer Grad-CAM reads: its qualified `name` in the model, the module, how its
    output becomes a (B, C, h, w) map (`reshape_transform`, None when it already is one),
    what it is (`kind`: "feature map", "channels-last map" or "tokens") and its `grid`."""

    name: str
    module: nn.Module
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    kind: str
    grid: tuple[int, int]


def _tokens_to_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h*w, C) transformer tokens -> (B, C, h, w): the class/register tokens
    are dropped, the patch tokens laid out on the patch grid (pytorch-grad-cam's ViT recipe)."""
    patches = tokens[:, prefix:, :]
    return patches.reshape(tokens.size(0), *grid, tokens.size(2)).permute(0, 3, 1, 2)


def _channels_last_to_map(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


# (qualified name, module, a copy of its output) of one submodule's forward pass.
ModuleOutput = tuple[str, nn.Module, torch.Tensor]


def _grid(spatial: torch.Size) -> tuple[int, int]:
    """(h, w) of a map's spatial size; every caller passes the two of a (B, C, h, w) map."""
    h, w = spatial
    return h, w


def _module_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[ModuleOutput]]:
    """forward_features(x) and (name, module, output copy) of every submodule with a tensor
    output, in the order they finished. Copies, because an in-place activation after a
    layer changes the tensor that layer returned."""
    records: list[ModuleOutput] = []

    def hook(name: str, module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            records.append((name, module, output.detach().clone()))

    handles = [
        m.register_forward_hook(functools.partial(hook, name))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            # build_model gives every model forward_features (a user's network is wrapped)
            features = cast(FeatureModel, model).forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return features, records


def _is_part_of(output: torch.Tensor, features: torch.Tensor) -> bool:
    """The map `output` is `features`, or its first or last channels (a concatenation)."""
    if output.ndim != 4 or output.shape[0] != features.shape[0]:
        return False
    if output.shape[2:] != features.shape[2:] or output.shape[1] > features.shape[1]:
        return False
    c = output.shape[1]
    return torch.equal(output, features[:, :c]) or torch.equal(output, features[:, -c:])


def choose_target_layer(
    model: nn.Module, input_shape: Sequence[int], name: str | None = None
) -> TargetLayer:
    """The layer Grad-CAM should read for `model` on (C, H, W) images, found by structure
    (or the module called `name`, which must output a (B, C, h, w) map).

    Convolutional nets (medbench's and timm's): the last module whose output, observed by a
    forward hook, is the map `forward_features` returns or a block of its channels (advanced_cnn
    concatenates pooled attention-gate features before its final stage's map; the final map
    is the spatial one), else the last module with a 4D output on that map's grid. Models with
    channels-last features (timm's Swin: `output_fmt` NHWC) the same, permuted. Vision
    transformers (token features): the last block's first norm, the input of the last
    attention, which is the last place patch tokens reach the class token (after it their
    gradient is zero; pytorch-grad-cam issues #76, #513), reshaped to the patch grid without
    the `num_prefix_tokens` class/register tokens."""
    inner = getattr(model, "backbone", model)  # medbench's input adapter wraps timm models
    was_training = model.training
    model.eval()
    try:
        probe = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        features, records = _module_outputs(model, probe)
    finally:
        model.train(was_training)
    if name is not None:
        return _named_layer(records, name)
    if features.ndim == 3:
        return _token_layer(model, inner, records, features)
    if features.ndim != 4:
        raise MedbenchError(
            f"cannot explain a model whose features have shape {tuple(features.shape)}; "
            "Grad-CAM needs a spatial feature map or transformer tokens"
        )
    if str(getattr(inner, "output_fmt", "NCHW")).upper().endswith("NHWC"):
        return _channels_last_layer(records, features)
    return _feature_map_layer(records, features)


def _named_layer(records: list[ModuleOutput], name: str) -> TargetLayer:
    maps = [r for r in records if r[2].ndim == 4]
    found = [r for r in maps if r[0] == name]
    if not found:
        # The outer modules (stages, blocks), last first: the names a user would pick.
        outer = dict.fromkeys(r[0] for r in reversed(maps) if r[0].count(".") <= 1)
        raise MedbenchError(
            f"the model has no layer {name!r} with a (B, C, h, w) output; its last ones "
            f"are: {textwrap.shorten(', '.join(outer), 160)}"
        )
    _, module, out = found[-1]
    return TargetLayer(name, module, None, "feature map", _grid(out.shape[2:]))


def _feature_map_layer(records: list[ModuleOutput], features: torch.Tensor) -> TargetLayer:
    exact = [r for r in records if _is_part_of(r[2], features)]
    on_grid = [r for r in records if r[2].ndim == 4 and r[2].shape[2:] == features.shape[2:]]
    if not (exact or on_grid):
        raise MedbenchError("found no layer whose output is the model's feature map")
    name, module, _ = (exact or on_grid)[-1]
    return TargetLayer(name, module, None, "feature map", _grid(features.shape[2:]))


def _channels_last_layer(records: list[ModuleOutput], features: torch.Tensor) -> TargetLayer:
    exact = [r for r in records if r[2].shape == features.shape and torch.equal(r[2], features)]
    if not exact:
        raise MedbenchError("found no layer whose output is the model's channels-last features")
    name, module, _ = exact[-1]
    return TargetLayer(
        name, module, _channels_last_to_map, "channels-last map", _grid(features.shape[1:3])
    )


def _token_layer(
    model: nn.Module, inner: nn.Module, records: list[ModuleOutput], features: torch.Tensor
) -> TargetLayer:
    blocks = getattr(inner, "blocks", None)
    norm = getattr(blocks[-1], "norm1", None) if blocks is not None and len(blocks) else None
    if norm is None:
        raise MedbenchError(
            f"cannot choose a Grad-CAM layer for {type(inner).__name__}: its features are "
            "tokens but it has no blocks[-1].norm1; explain it with --methods occlusion"
        )
    prefix = int(getattr(inner, "num_prefix_tokens", 1))
    n_patches = features.shape[1] - prefix
    patch_grid = tuple(getattr(getattr(inner, "patch_embed", None), "grid_size", ()) or ())
    if len(patch_grid) == 2 and patch_grid[0] * patch_grid[1] == n_patches:
        grid: tuple[int, int] = (patch_grid[0], patch_grid[1])
    else:
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise MedbenchError(f"cannot lay {n_patches} patch tokens out on a square grid")
        grid = (side, side)
    name = next(n for n, m in model.named_modules() if m is norm)
    observed = [r[2] for r in records if r[1] is norm]
    if not observed or observed[-1].shape[1] != features.shape[1]:
        raise MedbenchError(f"{name} did not produce the {features.shape[1]} tokens expected")
    reshape = functools.partial(_tokens_to_map, prefix=prefix, grid=grid)
    return TargetLayer(name, norm, reshape, "tokens", grid)


# --------------------------------------------------------------------------- saliency


def probability_function(model: nn.Module, task: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised images -> class probabilities: softmax, or a sigmoid per label."""

    def probs(x: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()
        return torch.sigmoid(logits) if is_multilabel(task) else torch.softmax(logits, dim=1)

    return probs


def gradcam_maps(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int], layer: TargetLayer
) -> np.ndarray:
    """Grad-CAM of class `targets[i]` for normalised image `x[i]`: (N, H, W) in [0, 1] at the
    model's input size (pytorch-grad-cam upsamples the layer's grid bilinearly)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(
        model=model, target_layers=[layer.module], reshape_transform=layer.reshape_transform
    ) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def occlusion_window(size: int) -> tuple[int, int]:
    """(window, stride) of the occluding square: a seventh of the image, half-overlapping."""
    window = max(2, size // 7)
    return window, max(1, window // 2)


def occlusion_maps(
    prob_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, targets: Sequence[int]
) -> np.ndarray:
    """Occlusion (captum): for each pixel, the mean drop in the target's probability when a
    window over it is set to the image's mean. (N, H, W), signed (positive: evidence for)."""
    from captum.attr import Occlusion

    window, stride = occlusion_window(x.shape[-1])
    c = x.shape[1]
    baseline = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x).contiguous()
    attribution = Occlusion(prob_fn).attribute(
        x,
        target=torch.as_tensor(list(targets), device=x.device),
        sliding_window_shapes=(c, window, window),
        strides=(c, stride, stride),
        baselines=baseline,
        perturbations_per_eval=64,
    )
    return attribution.sum(dim=1).detach().float().cpu().numpy()


def saliency_maps(
    method: str,
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int],
    task: str,
    layer: TargetLayer | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N, H, W) saliency of `method` ("gradcam", "occlusion" or "random") for normalised
    images `x` (N, C, H, W) and one target class each."""
    if method == "gradcam":
        layer = layer or choose_target_layer(model, tuple(x.shape[1:]))
        return gradcam_maps(model, x, targets, layer)
    if method == "occlusion":
        return occlusion_maps(probability_function(model, task), x, targets)
    if method == RANDOM:
        rng = np.random.default_rng(seed)
        return rng.random((x.shape[0], *x.shape[2:])).astype(np.float32)
    raise MedbenchError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")


# --------------------------------------------------------------------------- faithfulness


def blurred(x: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur (sigma a fourteenth of the image, 2 px at 28) of (N, C, H, W) images:
    the insertion game's start, the image with its detail removed (as in RISE)."""
    sigma = max(1.0, x.shape[-1] / 14)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = F.pad(x, (radius,) * 4, mode="reflect" if radius < x.shape[-1] else "replicate")
    h = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(h, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@torch.no_grad()
def deletion_insertion(
    prob_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    saliency: np.ndarray,
    target: int,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> tuple[float, float]:
    """(deletion AUC, insertion AUC) of one normalised image (1, C, H, W) and its (H, W)
    saliency for class `target`: the target's probability integrated (trapezoid rule) over
    the fraction of pixels removed (set to the image's mean) or inserted (into the blurred
    image), most salient first, in `steps` equal steps. Pixels of equal saliency go in a
    random order (`seed`): a map's flat part (Grad-CAM's zeroed negative evidence) says
    nothing of which pixel comes first, and raster order would favour one corner."""
    h, w = x.shape[-2:]
    tiebreak = np.random.default_rng(seed).random(h * w)
    order = np.lexsort((tiebreak, -np.asarray(saliency, dtype=np.float64).ravel()))
    counts = np.linspace(0, h * w, steps + 1).round().astype(int)
    masks = np.zeros((steps + 1, h * w), dtype=np.float32)
    for k, n in enumerate(counts):
        masks[k, order[:n]] = 1.0
    m = torch.from_numpy(masks).to(x.device).view(steps + 1, 1, h, w)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    deleted = x * (1 - m) + mean * m
    inserted = blurred(x) * (1 - m) + x * m
    p = prob_fn(torch.cat([deleted, inserted]))[:, target].float().cpu().numpy()
    fractions = counts / (h * w)
    return float(np.trapezoid(p[: steps + 1], fractions)), float(
        np.trapezoid(p[steps + 1 :], fractions)
    )


# --------------------------------------------------------------------------- cases and results


@dataclass
class ExplainedRow:
    """One explained (test image, class) pair. `role`: "predicted" (the class the model chose,
    also the true one when `correct`), "true" (the true class of a wrong case) or "label" (a
    positive label of a multi-label image; `correct`: the model predicted it). `deletion` and
    `insertion` hold the AUC per method, "random" included."""

    index: int
    target: int
    role: str
    true: list[int]
    predicted: list[int]
    probability: float  # the model's probability of `target`
    correct: bool
    deletion: dict[str, float] = field(default_factory=dict)
    insertion: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExplainedRow:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class MethodSummary:
    """A method's faithfulness over the rows it scores: mean and standard deviation of the
    deletion (lower is better) and insertion (higher is better) AUC, and how often it beat
    the random map on the same row."""

    method: str
    n: int
    deletion_mean: float
    deletion_sd: float
    insertion_mean: float
    insertion_sd: float
    deletion_beats_random: float | None  # fraction of rows
    insertion_beats_random: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ExplainResult:
    """What `explain_run` computed and wrote. `maps[method]` is (len(rows), H, W), one map per
    row; `files` names what was written into `out_dir`."""

    run_dir: str
    out_dir: str
    model: str
    dataset: str
    task: str
    label_names: list[str]
    image_size: int
    methods: list[str]
    target_layer: dict[str, Any]
    settings: dict[str, Any]
    rows: list[ExplainedRow]
    summary: list[MethodSummary]
    files: dict[str, str] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "maps"}
        out["rows"] = [r.to_json() for r in self.rows]
        out["summary"] = [s.to_json() for s in self.summary]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExplainResult:
        kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kwargs["rows"] = [ExplainedRow.from_json(r) for r in d["rows"]]
        kwargs["summary"] = [MethodSummary(**s) for s in d["summary"]]
        return cls(**kwargs)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One flat row per method (random last): the faithfulness table."""
        return [{"dataset": self.dataset, "model": self.model, **s.to_json()} for s in self.summary]


def select_cases(
    labels: np.ndarray, probs: np.ndarray, task: str, per_class: int
) -> list[ExplainedRow]:
    """Up to `per_class` correct and `per_class` wrong test images per class, in test order.
    Single-label: images of true class c the model got right (explained for c) or wrong
    (explained for the predicted and the true class). Multi-label: images with label c
    positive that the model found or missed, explained for c."""
    pred = metrics.predictions(probs, task)
    rows: list[ExplainedRow] = []
    if is_multilabel(task):
        for c in range(labels.shape[1]):
            for correct in (True, False):
                hits = np.flatnonzero((labels[:, c] == 1) & ((pred[:, c] == 1) == correct))
                for i in hits[:per_class]:
                    true, chosen = (
                        np.flatnonzero(labels[i]).tolist(),
                        np.flatnonzero(pred[i]).tolist(),
                    )
                    rows.append(
                        ExplainedRow(int(i), c, "label", true, chosen, float(probs[i, c]), correct)
                    )
        return rows
    y = labels.reshape(-1)
    for c in range(probs.shape[1]):
        for correct in (True, False):
            hits = np.flatnonzero((y == c) & ((pred == c) == correct))
            for i in hits[:per_class]:
                p = int(pred[i])
                rows.append(
                    ExplainedRow(int(i), p, "predicted", [c], [p], float(probs[i, p]), correct)
                )
                if not correct:
                    rows.append(
                        ExplainedRow(int(i), c, "true", [c], [p], float(probs[i, c]), False)
                    )
    return rows


def summarize(rows: Sequence[ExplainedRow], methods: Sequence[str]) -> list[MethodSummary]:
    """Per method (and random), over the rows of the predicted class (single-label) or of
    each positive label (multi-label): the class the model's decision is about."""
    scored = [r for r in rows if r.role != "true"]
    out = []
    for method in [*methods, RANDOM]:
        d = np.array([r.deletion[method] for r in scored], dtype=float)
        i = np.array([r.insertion[method] for r in scored], dtype=float)
        beats = None
        if method != RANDOM and len(scored):
            rd = np.array([r.deletion[RANDOM] for r in scored])
            ri = np.array([r.insertion[RANDOM] for r in scored])
            beats = (float(np.mean(d < rd)), float(np.mean(i > ri)))
        out.append(
            MethodSummary(
                method,
                len(scored),
                _mean(d),
                _sd(d),
                _mean(i),
                _sd(i),
                beats[0] if beats else None,
                beats[1] if beats else None,
            )
        )
    return out


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


def _sd(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if a.size > 1 else float("nan")


def explain_images(
    model: nn.Module,
    x: torch.Tensor,
    rows: list[ExplainedRow],
    task: str,
    methods: Sequence[str] = METHODS,
    *,
    layer: TargetLayer | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Saliency maps (method -> (len(rows), H, W)) for normalised images `x`, one per row
    (row k explains `x[k]` for class `rows[k].target`), and each row's deletion/insertion
    AUC per method and for a random map (filled into the rows)."""
    model.eval()
    if "gradcam" in methods and layer is None:
        layer = choose_target_layer(model, tuple(x.shape[1:]))
    targets = [r.target for r in rows]
    maps: dict[str, np.ndarray] = {}
    for method in [*methods, RANDOM]:
        parts = [
            saliency_maps(
                method,
                model,
                x[s : s + batch_size],
                targets[s : s + batch_size],
                task,
                layer,
                seed + s,
            )
            for s in range(0, len(rows), batch_size)
        ]
        maps[method] = np.concatenate(parts) if parts else np.zeros((0, *x.shape[2:]), np.float32)
    prob_fn = probability_function(model, task)
    for k, row in enumerate(rows):
        for method, m in maps.items():
            row.deletion[method], row.insertion[method] = deletion_insertion(
                prob_fn, x[k : k + 1], m[k], row.target, steps, seed + k
            )
    return maps


def _normalised_images(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return normalize(to_unit_float(images, runtime)).contiguous()


@torch.no_grad()
def _test_probabilities(
    model: nn.Module, images: torch.Tensor, task: str, runtime: Runtime
) -> np.ndarray:
    logits = [
        model(_normalised_images(images[s : s + 256], runtime)).float().cpu()
        for s in range(0, len(images), 256)
    ]
    return metrics.probabilities_from_logits(torch.cat(logits).numpy(), task)


def compute_explanations(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    per_class: int = DEFAULT_PER_CLASS,
    steps: int = DEFAULT_STEPS,
    layer_name: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> tuple[ExplainResult, np.ndarray]:
    """The numbers `explain_files.explain_run` writes: the result for a finished run's test
    predictions (see `explain_run` for the cases, methods and data folder; `out_dir` is only
    recorded, nothing is written) and the explained rows' uint8 (N, H, W, C) test images."""
    methods = _check_methods(methods)
    if per_class < 1 or steps < 2:
        raise MedbenchError(
            f"--per-class must be at least 1 and --steps at least 2, not {per_class} and {steps}"
        )
    model, meta = load_trained_model(run_dir)
    if model_spatial_dims(meta["model"]) == 3:
        raise MedbenchError(
            f"{meta['model']} is a 3D model; explanations are for models of 2D images for now"
        )
    runtime = resolve_runtime(device, "fp32", False)
    model.to(runtime.device).eval()
    if data_dir is None:
        data_dir = recorded_data_dir(run_dir)
    data = load_dataset(meta["dataset"], meta["image_size"], data_dir, progress=progress)
    task, test = meta["task"], data.test
    labels = test.labels.cpu().numpy()
    probs = _test_probabilities(model, test.images, task, runtime)
    rows = select_cases(labels.reshape(len(labels), -1), probs, task, per_class)
    images = test.images[[r.index for r in rows]]
    x = _normalised_images(images, runtime)
    layer = None
    if "gradcam" in methods:
        layer = choose_target_layer(model, tuple(x.shape[1:]), layer_name)
    maps = explain_images(model, x, rows, task, methods, layer=layer, steps=steps, seed=seed)
    window, stride = occlusion_window(x.shape[-1])
    target_layer: dict[str, Any] = (
        {"name": layer.name, "kind": layer.kind, "grid": list(layer.grid)} if layer else {}
    )
    result = ExplainResult(
        run_dir=str(run_dir),
        out_dir=str(out_dir),
        model=meta["model"],
        dataset=meta["dataset"],
        task=task,
        label_names=list(meta["label_names"]),
        image_size=int(meta["image_size"]),
        methods=list(methods),
        target_layer=target_layer,
        settings={
            "per_class": per_class,
            "steps": steps,
            "seed": seed,
            "split": "test",
            "occlusion_window": window,
            "occlusion_stride": stride,
            "device": str(runtime.device),
            "data_file": str(data.path),
        },
        rows=rows,
        summary=summarize(rows, methods),
        maps=maps,
    )
    return result, images.numpy()


def _check_methods(methods: Sequence[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise MedbenchError(
            f"unknown explanation method {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}"
        )
    return methods
