"""Transfer learning workflows: MedMNIST-to-MedMNIST pretraining, fine-tuning, linear probes
and k-NN probes of a pretrained backbone.

Three ways to use a pretrained backbone, as in the MedMNIST+ benchmark (Doerrich et al.
2024, "Rethinking model prototyping through the MedMNIST+ dataset collection"):

- `full` fine-tuning: every layer trains, the backbone at `lr * backbone_lr_scale`;
- `linear-probe`: the backbone is frozen (no gradients, and its batch-norm layers keep
  their pretrained running statistics: they stay in eval mode while the head trains);
- `knn`: no training; frozen, globally pooled embeddings and an 11-nearest-neighbour
  vote under cosine similarity (`knn_evaluate`; MedMNIST+'s own code votes by Euclidean
  distance, which `medbench.workflows.medmnist_plus` follows by default).
  The embedding and the vote are `medbench.models.probes`, shared with MedMNIST+'s probes.

Reading weights and loading them into a model (a medbench run, a timm weights file or
`hub`) is `medbench.training.pretrained`, which the engine uses; this module runs the engine.

`transfer` pretrains on one or more MedMNIST datasets and fine-tunes on a target. Several
source datasets are used *sequentially* (each stage starts from the previous one), not
pooled: their label spaces differ, so a pooled run would need one head per dataset.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medbench.data import MedMNISTData, load_dataset
from medbench.errors import MedbenchError
from medbench.models import build_model, count_parameters, probes
from medbench.models.adapters import InputAdapter
from medbench.runs.results import RunResults, read_results
from medbench.scoring import metrics
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.inference import labels_numpy, load_trained_model, normalize, to_unit_float
from medbench.training.pretrained import prepare_pretrained
from medbench.utils.fsutil import atomic_write_json
from medbench.utils.runtime import Runtime, resolve_runtime

TRANSFER_MODES = ("full", "linear-probe", "knn")
KNN_K = 11


# ----------------------------------------------------------------------------- k-NN probe


def embed(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = 256
) -> np.ndarray:
    """Globally pooled features `forward_head(forward_features(x), pre_logits=True)`,
    L2-normalised, for uint8 (N, H, W, C) images."""
    return probes.embed(
        model,
        images,
        lambda batch: normalize(to_unit_float(batch, runtime)),
        batch_size=batch_size,
        autocast=runtime.autocast,
        l2_normalize=True,
    )


def knn_probabilities(
    reference: np.ndarray, reference_labels: np.ndarray, queries: np.ndarray, task: str, k: int
) -> np.ndarray:
    """Neighbour-vote probabilities, float32: the share of the k most cosine-similar
    references in each class up to the highest label present (multi-label: with each
    label). Embeddings must be L2-normalised."""
    n_classes = int(reference_labels.max()) + 1
    votes = probes.knn_probabilities(
        reference, reference_labels, queries, task, n_classes, k, metric="cosine"
    )
    return votes.astype(np.float32)


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
            reference,
            ref_y,
            embed(model, _match_channels(s.images, channels), runtime),
            info.task,
            k,
        )
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


def train_or_reuse(
    config: TrainConfig, *, data: MedMNISTData | None = None, progress: bool | None = False
) -> RunResults:
    """Train `config` into its run folder, or read the results of the finished run there."""
    results_file = Path(config.run_dir) / "results.json" if config.run_dir else None
    if results_file is not None and results_file.is_file():
        results = read_results(results_file)
        if results.status == "finished":
            return results
    return train(config, data=data, progress=progress, resume=True)


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
    Returns {"pretrain": [results...], "target": results}, each as its results.json holds it
    (`RunResults.to_json()`; for knn, `knn_evaluate`'s dict)."""
    if mode not in TRANSFER_MODES:
        raise MedbenchError(
            f"transfer mode must be one of {', '.join(TRANSFER_MODES)}, not {mode!r}"
        )
    if not pretrain_on and not config.pretrained:
        raise MedbenchError("give datasets to pretrain on (--pretrain-on) or --pretrained weights")
    out_dir = Path(out_dir)
    stages, previous = _pretrain(pretrain_on, config, out_dir, pretrain_epochs, progress)
    final = dataclasses.replace(
        config,
        pretrained=previous,
        finetune="full" if mode == "knn" else mode,
        run_dir=str(out_dir / f"{mode}-{config.dataset}"),
        model_options=dict(config.model_options),
    )
    if mode == "knn":
        target = _knn_target(final, k, progress)
    else:
        target = train_or_reuse(final, progress=progress).to_json()
    return {"pretrain": [s.to_json() for s in stages], "target": target}


def _pretrain(
    datasets: list[str],
    config: TrainConfig,
    out_dir: Path,
    epochs: int | None,
    progress: bool | None,
) -> tuple[list[RunResults], str | None]:
    """Train `config.model` on each dataset in turn, each stage from the previous one's
    weights; the stages' results and the weights the target starts from."""
    previous, stages = config.pretrained, []
    for i, dataset in enumerate(datasets):
        stage = dataclasses.replace(
            config,
            dataset=dataset,
            epochs=epochs or config.epochs,
            pretrained=previous,
            finetune="full",
            run_dir=str(out_dir / f"pretrain-{i}-{dataset}"),
            model_options=dict(config.model_options),
        )
        stages.append(train_or_reuse(stage, progress=progress))
        previous = stage.run_dir
    return stages, previous


def _knn_target(final: TrainConfig, k: int, progress: bool | None) -> dict[str, Any]:
    """k-NN probe of `final.pretrained` on `final.dataset`, written to its run folder."""
    data = load_dataset(final.dataset, final.size, final.data_dir, progress=bool(progress))
    model = build_model(
        final.model,
        data.info.n_channels,
        data.info.n_classes,
        final.size,
        **final.model_options,
    )
    _, weights = prepare_pretrained(model, final)
    target = knn_evaluate(model, data, k, device=final.device)
    target["model"]["name"] = final.model
    target["pretrained"] = final.pretrained
    target["pretrained_weights"] = weights
    target["config"] = final.to_dict()
    assert final.run_dir is not None  # the transfer plan gives the target its run folder
    atomic_write_json(Path(final.run_dir) / "results.json", target)
    return target
