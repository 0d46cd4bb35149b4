"""The MedMNIST+ protocol: pretrained backbones end-to-end, by linear probe and by k-NN.

Doerrich et al., "Rethinking model prototyping through the MedMNIST+ dataset collection"
(Scientific Reports 2025; arXiv 2404.15786; code: sdoerrich97/rethinking-model-prototyping-
MedMNISTPlus) train ten pretrained backbones three ways at 28-224 px. What their code does,
and what `PlusRecipe` reproduces:

- inputs: every image gets the backbone's own mean/std (timm's `pretrained_cfg`) and is then
  zero-padded to 224 px (normalise first, pad after, so the border is the mean colour);
  `input_mode="resize"` resizes instead, `"none"` keeps the image's own size;
- end-to-end: every layer trains, AdamW at 1e-4 (weight decay 0.01, timm's default), cosine
  schedule over the epochs without warm-up, batch 64, up to 100 epochs, early stopping
  after 5 epochs without a better validation loss;
- linear probe: the backbone is frozen and only a linear classifier trains, by the same
  rule; here it trains on cached embeddings, which is the same computation as long as the
  backbone's batch-norm layers keep their pretrained statistics (MedMNIST+'s code leaves
  them in train mode, so its frozen CNNs still update their running means);
- k-NN: k=11 over the training split's pre-logits embeddings. Their code uses sklearn's
  `NearestNeighbors` with its default metric, Euclidean, on raw embeddings, and a hard
  majority vote (ACC only); `knn_metric="cosine"` is offered too. The neighbour shares are
  kept as scores, so an AUC is reported beside the vote's ACC (MedMNIST+ reports none).

End-to-end runs go through `medbench.training.engine.train` (the input transform is the model's
input adapter, `input_norm=backbone`), selecting the epoch of the lowest validation loss
and stopping after `patience` epochs without a lower one, as MedMNIST+ does. The probes share one embedding cache
(`medbench.models.embeddings`), so each backbone embeds each split of each dataset once.
Embedding a split and the k-NN vote are `medbench.models.probes`, which
`medbench.workflows.transfer` shares.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbench.data import MedMNISTData, load_dataset
from medbench.errors import MedbenchError
from medbench.models import TIMM_PREFIX, probes
from medbench.models.adapters import (
    MEDMNIST_MEAN,
    MEDMNIST_STD,
    backbone_mean_std,
)
from medbench.models.embeddings import EmbeddingCache, EmbeddingKey
from medbench.runs.results import read_results
from medbench.scoring import metrics
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.inference import labels_numpy, load_trained_model, to_unit_float
from medbench.training.pretrained import HUB, create_timm_pretrained, weights_sha256
from medbench.utils.fsutil import atomic_write_json
from medbench.utils.runtime import Runtime, resolve_runtime

REGIMES = ("end-to-end", "linear-probe", "knn")
INPUT_MODES = ("pad", "resize", "none")
KNN_METRICS = probes.KNN_METRICS  # the k-NN probe's distances
PROBE_SPLITS = ("val", "test")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PlusRecipe:
    """The MedMNIST+ training and evaluation rule (defaults: the paper's)."""

    target_size: int = 224
    input_mode: str = "pad"
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 100
    patience: int = 5
    k: int = 11
    knn_metric: str = "euclidean"
    embed_batch_size: int = 256

    def validate(self) -> PlusRecipe:
        if self.input_mode not in INPUT_MODES:
            raise MedbenchError(
                f"--input must be one of {', '.join(INPUT_MODES)}, not {self.input_mode!r}"
            )
        if self.knn_metric not in KNN_METRICS:
            raise MedbenchError(
                f"--knn-metric must be one of {', '.join(KNN_METRICS)}, not {self.knn_metric!r}"
            )
        for name in ("target_size", "batch_size", "epochs", "patience", "k", "embed_batch_size"):
            if getattr(self, name) < 1:
                raise MedbenchError(f"{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise MedbenchError("the learning rate must be positive, the weight decay not negative")
        return self


# ----------------------------------------------------------------------------- backbones


@dataclass
class Backbone:
    """A frozen, pretrained feature extractor and what its inputs must look like."""

    name: str
    model: nn.Module
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str  # what was asked for: "hub", a file, a folder or a medbench run
    weights_source: str  # where they were read from
    weights_sha256: str


def load_backbone(name: str, weights: str) -> Backbone:
    """`name`: `timm:<model>` (weights "hub", a weights file or a folder) or a medbench
    model (weights: a finished medbench run folder or its model.pt)."""
    if name.startswith(TIMM_PREFIX):
        model, source, sha = create_timm_pretrained(name[len(TIMM_PREFIX) :], weights)
        channels = _first_conv_channels(model) or 3
        mean, std = backbone_mean_std(model, channels)
    else:
        if weights == HUB:
            raise MedbenchError(
                f"{name} is a medbench model: give its weights as a medbench run folder, "
                f"not hub (hub weights exist for timm:<name> models)"
            )
        model, meta = load_trained_model(weights)
        if meta["model"] != name:
            raise MedbenchError(f"{weights} holds a {meta['model']} model, not {name}")
        channels, source = int(meta["in_channels"]), str(weights)
        mean, std = (MEDMNIST_MEAN,) * channels, (MEDMNIST_STD,) * channels
        sha = weights_sha256(_model_file(weights))
    model.eval().requires_grad_(False)
    return Backbone(name, model, channels, mean, std, weights, source, sha)


def _model_file(weights: str) -> Path:
    path = Path(weights)
    return path / "model.pt" if path.is_dir() else path


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


# ----------------------------------------------------------------------------- embeddings


def prepare_inputs(
    images: torch.Tensor, backbone: Backbone, recipe: PlusRecipe, runtime: Runtime
) -> torch.Tensor:
    """uint8 (N, H, W, C) images as the backbone takes them: its channel count, its own
    mean/std, then zero-padded (or resized) to `recipe.target_size`."""
    x = to_unit_float(images, runtime).contiguous()
    if x.shape[1] != backbone.in_channels:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
    mean = torch.tensor(backbone.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(backbone.std, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    size, (h, w) = recipe.target_size, x.shape[-2:]
    if recipe.input_mode == "resize" and (h, w) != (size, size):
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if recipe.input_mode == "pad" and (h, w) != (size, size):
        if h > size or w > size:
            raise MedbenchError(f"cannot zero-pad {h}x{w} images to a smaller {size} px")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top), value=0.0)
    return x


def transform_description(backbone: Backbone, recipe: PlusRecipe) -> str:
    """The input transform in words, part of every embedding's cache key."""
    where = "" if recipe.input_mode == "none" else str(recipe.target_size)
    mean = ",".join(f"{v:.6g}" for v in backbone.mean)
    std = ",".join(f"{v:.6g}" for v in backbone.std)
    return f"{recipe.input_mode}{where} ch={backbone.in_channels} mean={mean} std={std}"


def embed_images(
    backbone: Backbone, images: torch.Tensor, recipe: PlusRecipe, runtime: Runtime
) -> np.ndarray:
    """Pre-logits embeddings, `forward_head(forward_features(x), pre_logits=True)`, as
    MedMNIST+ extracts them (not normalised)."""
    return probes.embed(
        backbone.model.to(runtime.device),
        images,
        lambda batch: prepare_inputs(batch, backbone, recipe, runtime),
        batch_size=recipe.embed_batch_size,
    )


def split_embeddings(
    backbone: Backbone,
    data: MedMNISTData,
    recipe: PlusRecipe,
    cache: EmbeddingCache,
    runtime: Runtime,
) -> dict[str, np.ndarray]:
    """Embeddings of the train, val and test splits, from `cache` where it has them."""
    out = {}
    for split in ("train", *PROBE_SPLITS):
        key = EmbeddingKey(
            model=backbone.name,
            weights_sha256=backbone.weights_sha256,
            dataset=data.info.name,
            size=data.size,
            split=split,
            transform=transform_description(backbone, recipe),
            data_md5=str(data.md5 or ""),
        )
        images = data.split(split).images
        out[split] = cache.get_or_compute(
            key, functools.partial(embed_images, backbone, images, recipe, runtime)
        )
    return out


# ----------------------------------------------------------------------------- the probes


def _is_multilabel(task: str) -> bool:
    return task.startswith("multi-label")


def _probe_loss(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if _is_multilabel(task):
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y.reshape(-1).long())


def _scores(logits: torch.Tensor, task: str) -> np.ndarray:
    scores = torch.sigmoid(logits) if _is_multilabel(task) else torch.softmax(logits, dim=1)
    return scores.numpy()


@dataclass
class ProbeFit:
    """A trained linear probe and how its training went."""

    layer: nn.Linear
    epochs: int
    best_epoch: int
    best_val_loss: float


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    task: str,
    n_outputs: int,
    recipe: PlusRecipe,
    seed: int,
) -> ProbeFit:
    """A linear classifier on frozen embeddings, by the MedMNIST+ rule: AdamW, cosine
    schedule per epoch, batch `recipe.batch_size`, the weights of the epoch with the lowest
    validation loss, stopping after `recipe.patience` epochs without a better one."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layer's initialisation
    layer = nn.Linear(train_x.shape[1], n_outputs)
    opt = torch.optim.AdamW(layer.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    xt, yt = torch.from_numpy(train_x), torch.from_numpy(train_y)
    xv, yv = torch.from_numpy(val_x), torch.from_numpy(val_y)
    best = (math.inf, 0, {k: v.clone() for k, v in layer.state_dict().items()})
    epoch = 0
    for epoch in range(1, recipe.epochs + 1):
        for group in opt.param_groups:  # timm's CosineLRScheduler, t_initial=epochs
            group["lr"] = 0.5 * recipe.lr * (1 + math.cos(math.pi * (epoch - 1) / recipe.epochs))
        for idx in torch.randperm(len(xt), generator=gen).split(recipe.batch_size):
            opt.zero_grad(set_to_none=True)
            _probe_loss(layer(xt[idx]), yt[idx], task).backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(_probe_loss(layer(xv), yv, task))
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.clone() for k, v in layer.state_dict().items()})
        elif epoch - best[1] >= recipe.patience:
            break
    layer.load_state_dict(best[2])
    return ProbeFit(layer, epoch, best[1], best[0])


def knn_scores(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    queries: np.ndarray,
    task: str,
    n_classes: int,
    k: int = 11,
    metric: str = "euclidean",
) -> np.ndarray:
    """The share of each class (multi-label: of each label) among the k nearest training
    embeddings. Its argmax (multi-label: share > 0.5) is MedMNIST+'s majority vote."""
    return probes.knn_probabilities(
        reference.astype(np.float64),
        reference_labels,
        queries.astype(np.float64),
        task,
        n_classes,
        k,
        metric=metric,
    )


# ----------------------------------------------------------------------------- results


@dataclass
class PlusRow:
    """One dataset x size x backbone x regime x seed result (k-NN has no seed)."""

    dataset: str
    size: int
    model: str
    regime: str
    seed: int | None
    weights: str
    weights_source: str
    weights_sha256: str
    input: str
    metrics: dict[str, dict[str, float]]  # split -> {"acc", "auc"}
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PlusRow:
        return cls(**d)

    def flat(self) -> dict[str, Any]:
        """One table row: the identity, test and val ACC/AUC, the weights' short hash."""
        row = {k: getattr(self, k) for k in ("dataset", "size", "model", "regime", "seed")}
        for split in PROBE_SPLITS:
            for name in ("acc", "auc"):
                row[f"{split}_{name}"] = self.metrics.get(split, {}).get(name)
        row["weights_source"], row["weights_sha256"] = self.weights_source, self.weights_sha256[:12]
        return row


@dataclass
class PlusResults:
    """Every row of one MedMNIST+ grid, with the recipe that made them."""

    recipe: dict[str, Any]
    rows: list[PlusRow] = field(default_factory=list)
    cache: dict[str, int] = field(default_factory=dict)  # embedding cache hits / misses
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": "medmnist-plus",
            "recipe": self.recipe,
            "cache": self.cache,
            "rows": [r.to_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PlusResults:
        if d.get("kind") != "medmnist-plus":
            raise MedbenchError("not a MedMNIST+ results file (kind is not 'medmnist-plus')")
        rows = [PlusRow.from_json(r) for r in d.get("rows", [])]
        return cls(d["recipe"], rows, dict(d.get("cache", {})), d.get("schema_version", 1))


def _split_metrics(y: np.ndarray, scores: np.ndarray, data: MedMNISTData) -> dict[str, float]:
    m = metrics.evaluate(y, scores, data.info.task, data.info.label_names)
    return {"acc": float(m["acc"]), "auc": float(m["auc"])}


def _n_outputs(data: MedMNISTData) -> int:
    return data.info.n_classes


def probe_rows(
    backbone: Backbone,
    data: MedMNISTData,
    recipe: PlusRecipe,
    regimes: Sequence[str],
    seeds: Sequence[int],
    cache: EmbeddingCache,
    runtime: Runtime,
) -> list[PlusRow]:
    """Linear-probe (one row per seed) and k-NN (one row) results of one backbone on one
    dataset, from the cached embeddings."""
    start = time.perf_counter()
    emb = split_embeddings(backbone, data, recipe, cache, runtime)
    embed_seconds = time.perf_counter() - start
    labels = {s: labels_numpy(data.split(s).labels) for s in ("train", *PROBE_SPLITS)}
    base = _row_base(backbone, data, recipe)
    rows = []
    if "linear-probe" in regimes:
        for seed in seeds:
            t0 = time.perf_counter()
            fit = fit_linear_probe(
                emb["train"],
                labels["train"],
                emb["val"],
                labels["val"],
                data.info.task,
                _n_outputs(data),
                recipe,
                seed,
            )
            with torch.no_grad():
                scores = {
                    s: _scores(fit.layer(torch.from_numpy(emb[s])), data.info.task)
                    for s in PROBE_SPLITS
                }
            rows.append(
                PlusRow(
                    **base,
                    regime="linear-probe",
                    seed=seed,
                    metrics={s: _split_metrics(labels[s], scores[s], data) for s in PROBE_SPLITS},
                    seconds=time.perf_counter() - t0,
                    details={
                        "epochs": fit.epochs,
                        "best_epoch": fit.best_epoch,
                        "best_val_loss": fit.best_val_loss,
                        "embed_seconds": embed_seconds,
                    },
                )
            )
    if "knn" in regimes:
        t0 = time.perf_counter()
        scores = {
            s: knn_scores(
                emb["train"],
                labels["train"],
                emb[s],
                data.info.task,
                data.info.n_classes,
                recipe.k,
                recipe.knn_metric,
            )
            for s in PROBE_SPLITS
        }
        rows.append(
            PlusRow(
                **base,
                regime="knn",
                seed=None,
                metrics={s: _split_metrics(labels[s], scores[s], data) for s in PROBE_SPLITS},
                seconds=time.perf_counter() - t0,
                details={
                    "k": recipe.k,
                    "metric": recipe.knn_metric,
                    "embed_seconds": embed_seconds,
                },
            )
        )
    return rows


def _row_base(backbone: Backbone, data: MedMNISTData, recipe: PlusRecipe) -> dict[str, Any]:
    return {
        "dataset": data.info.name,
        "size": data.size,
        "model": backbone.name,
        "weights": backbone.weights,
        "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256,
        "input": transform_description(backbone, recipe),
    }


# ----------------------------------------------------------------------------- end-to-end


def end_to_end_config(
    backbone: Backbone,
    dataset: str,
    size: int,
    seed: int,
    recipe: PlusRecipe,
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
) -> TrainConfig:
    """The engine configuration of one end-to-end MedMNIST+ run."""
    options: dict[str, Any] = {}
    if backbone.name.startswith(TIMM_PREFIX):
        adapter = {"pad": "pad", "resize": "upsample", "none": "none"}[recipe.input_mode]
        options = {
            "input_adapter": adapter,
            "input_size": recipe.target_size,
            "input_norm": "backbone",
        }
    elif recipe.input_mode != "none":
        raise MedbenchError(
            f"end-to-end training of the medbench model {backbone.name} takes its images at "
            f"their own size; use --input none (padding applies to timm backbones)"
        )
    return TrainConfig(
        dataset=dataset,
        model=backbone.name,
        size=size,
        seed=seed,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        optimizer="adamw",
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        schedule="cosine",
        warmup_epochs=0.0,
        grad_clip=None,
        augment="none",
        select_metric="loss",
        patience=recipe.patience,
        pretrained=_engine_weights(backbone),
        finetune="full",
        backbone_lr_scale=1.0,
        model_options=options,
        data_dir=data_dir,
        run_dir=str(run_dir),
        device=device,
    ).validate()


def _engine_weights(backbone: Backbone) -> str:
    if backbone.weights == HUB or not Path(backbone.weights).is_dir():
        return backbone.weights
    if backbone.name.startswith(TIMM_PREFIX):  # a Hugging Face folder: the file inside
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (Path(backbone.weights) / name).is_file():
                return str(Path(backbone.weights) / name)
        raise MedbenchError(f"{backbone.weights} holds no model.safetensors or pytorch_model.bin")
    return backbone.weights


def end_to_end_row(
    backbone: Backbone,
    data: MedMNISTData,
    seed: int,
    recipe: PlusRecipe,
    run_dir: Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
) -> PlusRow:
    """Train every layer of `backbone` on `data` with the engine; its val/test metrics."""
    config = end_to_end_config(
        backbone, data.info.name, data.size, seed, recipe, run_dir, data_dir=data_dir, device=device
    )
    results_file = run_dir / "results.json"
    t0 = time.perf_counter()
    if results_file.is_file():  # a finished run is reused, as benchmark grids reuse theirs
        results = read_results(results_file)
    else:
        results = train(config, data=data, progress=False)
    m = results.metrics
    return PlusRow(
        **_row_base(backbone, data, recipe),
        regime="end-to-end",
        seed=seed,
        metrics={s: {"acc": float(m[s]["acc"]), "auc": float(m[s]["auc"])} for s in PROBE_SPLITS},
        seconds=time.perf_counter() - t0,
        details={
            "run_dir": str(run_dir),
            "best_round": results.best_round,
            "rounds_completed": results.rounds_completed,
        },
    )


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone of the grid: a model name and where its weights are."""

    model: str
    weights: str


def run_plus(
    datasets: Sequence[str],
    sizes: Sequence[int],
    backbones: Sequence[BackboneSpec],
    out_dir: str | Path,
    *,
    regimes: Sequence[str] = REGIMES,
    seeds: Sequence[int] = (0, 1, 2),
    recipe: PlusRecipe = PlusRecipe(),
    data_dir: str | None = None,
    cache: EmbeddingCache | None = None,
    device: str = "auto",
    on_row: Callable[[PlusRow], None] | None = None,
) -> PlusResults:
    """The MedMNIST+ grid: datasets x sizes x backbones, each regime, each seed.

    Embeddings go to `cache` (default `out_dir/embeddings`), end-to-end runs to
    `out_dir/runs/<dataset>-<size>/<model>/seed<k>`; results to `out_dir/plus.json`
    (rewritten atomically after every row, so an interrupted grid keeps what it finished).
    """
    recipe.validate()
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown or not regimes:
        raise MedbenchError(f"regimes must be among {', '.join(REGIMES)}, not {unknown or 'none'}")
    out_dir = Path(out_dir)
    cache = cache or EmbeddingCache(out_dir / "embeddings")
    runtime = resolve_runtime(device, "fp32", False)
    results = PlusResults(recipe=asdict(recipe))
    loaded = [load_backbone(b.model, b.weights) for b in backbones]

    def add(row: PlusRow) -> None:
        results.rows.append(row)
        results.cache = asdict(cache.stats)
        atomic_write_json(out_dir / "plus.json", results.to_json())
        if on_row is not None:
            on_row(row)

    for dataset in datasets:
        for size in sizes:
            data = load_dataset(dataset, size, data_dir, progress=False)
            for backbone in loaded:
                for row in probe_rows(backbone, data, recipe, regimes, seeds, cache, runtime):
                    add(row)
                if "end-to-end" in regimes:
                    runs = out_dir / "runs" / f"{dataset}-{size}"
                    for row in _end_to_end_rows(
                        backbone, data, recipe, seeds, runs, data_dir, device
                    ):
                        add(row)
    results.cache = asdict(cache.stats)
    atomic_write_json(out_dir / "plus.json", results.to_json())
    return results


def _end_to_end_rows(
    backbone: Backbone,
    data: MedMNISTData,
    recipe: PlusRecipe,
    seeds: Sequence[int],
    runs: Path,
    data_dir: str | None,
    device: str,
) -> Iterator[PlusRow]:
    """`backbone` trained end to end on `data`, a row per seed as each run finishes; the
    runs go to `runs/<model>/seed<k>`."""
    safe = backbone.name.replace(":", "-").replace("/", "-")
    for seed in seeds:
        run_dir = runs / safe / f"seed{seed}"
        yield end_to_end_row(
            backbone, data, seed, recipe, run_dir, data_dir=data_dir, device=device
        )


def format_rows(rows: Sequence[PlusRow]) -> str:
    """A plain-text table: one line per row, test and val ACC/AUC."""
    head = (
        f"{'dataset':<16}{'size':>5} {'model':<22}{'regime':<14}{'seed':>5}"
        f"{'val ACC':>9}{'val AUC':>9}{'test ACC':>10}{'test AUC':>10}  weights"
    )
    lines = [head]
    for r in rows:
        f = r.flat()
        cells = "".join(
            f"{(f[k] if f[k] is not None else float('nan')):>{w}.3f}"
            for k, w in (("val_acc", 9), ("val_auc", 9), ("test_acc", 10), ("test_auc", 10))
        )
        seed = "-" if r.seed is None else str(r.seed)
        lines.append(
            f"{r.dataset:<16}{r.size:>5} {r.model:<22}{r.regime:<14}{seed:>5}{cells}  "
            f"{r.weights_source} ({r.weights_sha256[:12]})"
        )
    return "\n".join(lines)
