"""The training engine: one run = one model trained on one dataset with one seed.

The whole loop is `train()`; read it top to bottom. It knows nothing of a particular
architecture (models come from `medbench.models`) and models know nothing of devices,
precision or checkpoints (they come from here and `medbench.runtime`).

Training is counted in optimiser *steps*. A round ends with a validation pass and a
checkpoint; a round is one epoch, except when a time budget allows fewer than
`MIN_ROUNDS` epochs, in which case the budget is cut into up to `MIN_ROUNDS` equal rounds so
model selection and resumption still work on large datasets (e.g. OCTMNIST on a CPU); then
validation may take at most `EVAL_SHARE` of the budget, which can mean fewer rounds. After
each round the plan is redone from the rounds' measured wall time. Per-round
validation (model selection) uses a fixed sample of at most `SELECTION_VAL_IMAGES` images of
the validation split; the final evaluation uses all of it.
Every random choice (data order, augmentation) is derived from (seed, epoch) or
(seed, step), and the global RNG state is checkpointed, so a resumed run on the CPU
ends with exactly the weights of an uninterrupted one.

Under `torchrun` (medbench.distributed, docs/distributed.md) the same loop runs in every
process: the model is wrapped in DistributedDataParallel, each process trains on its
equal share of every global batch, and rank 0 alone validates, decides (budget plan, best
round, early stop), writes files and prints, then tells the others what it decided.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medbench import checkpoint as ckpt
from medbench import distributed, metrics
from medbench.augment import BatchAugment, BatchMix
from medbench.callbacks import Callback, CallbackList, RoundEnd, RunInfo
from medbench.config import TrainConfig
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.fsutil import atomic_path, atomic_write_json
from medbench.inference import (
    MEAN,
    STD,
    is_multilabel,
    labels_numpy,
    load_trained_model,
    measure_speed,
    normalize,
    predict_logits,
    to_unit_float,
)
from medbench.modelcard import write_model_card
from medbench.results import ModelInfo, RoundRecord, RunResults, Timing
from medbench.runtime import (
    Runtime,
    environment,
    place_model,
    resolve_runtime,
    seed_everything,
)

DEFAULT_EPOCHS = 40
MIN_ROUNDS = 5
PRECISE_BN_IMAGES = 1024
SELECTION_VAL_IMAGES = 2048  # per-round validation sample on large validation splits
EVAL_SHARE = 0.25  # most of a short budget that per-round validation may take
SMALL_TRAIN_SPLIT = 2000  # below this many training images the default batch is 32


# ----------------------------------------------------------------------------- tensors


# ----------------------------------------------------------------------------- pieces


def make_optimizer(
    model: nn.Module, config: TrainConfig, lr_scales: dict[int, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD over the trainable parameters. `lr_scales` maps id(parameter) to a
    learning-rate multiplier (e.g. a lower rate for a pretrained backbone)."""
    # No weight decay on norms and biases (1-d parameters): standard practice since
    # "Bag of Tricks" (He et al. 2019); decaying BN gammas hurts small-data training.
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            key = (p.ndim > 1, (lr_scales or {}).get(id(p), 1.0))
            buckets.setdefault(key, []).append(p)
    groups = [
        {"params": ps, "weight_decay": config.weight_decay if decays else 0.0, "lr_scale": scale}
        for (decays, scale), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))
    ]
    # PyTorch's fused kernels: one pass over each parameter instead of a dozen. On the CPU,
    # where the default is the per-tensor loop, an AdamW step over ResNet-18's 11.2M
    # parameters took 40 ms per-tensor, 33 ms foreach and 6 ms fused (2 threads), and
    # advanced_cnn trained 11% faster at batch 32 (docs/training.md).
    fused = _fused_optimizer_ok([p for g in groups for p in g["params"]])
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    if config.optimizer == "adam":  # the official MedMNIST recipe: Adam, no weight decay
        return torch.optim.Adam(groups, lr=config.lr, fused=fused)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=True, fused=fused
    )


def _fused_optimizer_ok(params: list[nn.Parameter]) -> bool | None:
    """True where PyTorch's fused optimiser kernels are used: every parameter on the CPU, or
    every one on CUDA. None (PyTorch's own choice) elsewhere, e.g. MPS."""
    return True if {p.device.type for p in params} in ({"cpu"}, {"cuda"}) else None


def lr_factor(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at `step` (0-based) of `total_steps`."""
    if config.schedule == "multistep":  # official MedMNIST: x0.1 at 50% and 75% of training
        return 0.1 ** ((step >= 0.5 * total_steps) + (step >= 0.75 * total_steps))
    warmup = min(config.warmup_epochs * steps_per_epoch, 0.2 * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1.0, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_loss(
    config: TrainConfig, task: str, train_labels: torch.Tensor, n_classes: int, device: torch.device
) -> Callable:
    if is_multilabel(task):
        pos_weight = None
        if config.class_balance == "weighted_loss":
            pos = train_labels.sum(0).clamp(min=1)
            pos_weight = ((len(train_labels) - pos) / pos).clamp(max=50).to(device)
        ls = config.label_smoothing

        def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if ls:
                target = target * (1 - ls) + 0.5 * ls
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)

        return bce
    weight = None
    if config.class_balance == "weighted_loss":
        counts = torch.bincount(train_labels, minlength=n_classes).float().clamp(min=1)
        weight = (counts.sum() / (n_classes * counts)).to(device)

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype.is_floating_point:  # soft targets (MixUp/CutMix)
            logp = F.log_softmax(logits, dim=1)
            if config.label_smoothing:
                target = target * (1 - config.label_smoothing) + config.label_smoothing / n_classes
            w = weight if weight is not None else torch.ones(n_classes, device=logits.device)
            return -(target * logp * w).sum(1).mean()
        return F.cross_entropy(
            logits, target, weight=weight, label_smoothing=config.label_smoothing
        )

    return ce


def epoch_order(n: int, seed: int, epoch: int, sample_weights: torch.Tensor | None) -> torch.Tensor:
    """The order of training samples in `epoch`, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if sample_weights is not None:  # class-balanced sampling, with replacement
        return torch.multinomial(sample_weights, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


def balanced_sample_weights(labels: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    if is_multilabel(task):  # weight a sample by its rarest positive label
        freq = labels.float().mean(0).clamp(min=1e-3)
        w = (labels.float() / freq).max(1).values
        return torch.where(w > 0, w, torch.ones_like(w))
    counts = torch.bincount(labels, minlength=n_classes).float().clamp(min=1)
    return (1.0 / counts)[labels]


def default_batch_size(n_train: int) -> int:
    """128 (MedMNIST's batch), or 32 for small training splits (BreastMNIST's 546 images,
    RetinaMNIST's 1,080) so that a run takes enough optimiser steps per epoch."""
    return 32 if n_train < SMALL_TRAIN_SPLIT else 128


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int
) -> None:
    """Recompute BatchNorm statistics for the current weights ("precise BN", Wu & Johnson
    2021, "Rethinking 'Batch' in BatchNorm"), on un-augmented training images.

    The running averages that BN keeps during training lag behind weights that move fast
    (warm-up, short budgets, few steps per epoch); evaluated with them, an otherwise
    learning model can predict one class for everything. Only BN layers that train are
    touched (a frozen backbone keeps its statistics); training itself never reads them, so
    the weights' trajectory is unchanged."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and (m.weight is None or m.weight.requires_grad)
    ]
    if not bns or len(images) == 0:
        return
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(to_unit_float(images[start : start + batch_size], runtime))
            with runtime.autocast():
                model(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def default_run_dir(config: TrainConfig, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.model.replace(":", "-").replace("/", "-")
    return Path(root) / f"{config.dataset}_{config.size}-{name}-seed{config.seed}-{stamp}"


class _Progress:
    """A tqdm bar on a terminal, one summary line per round otherwise."""

    def __init__(self, enabled: bool | None, total: int, desc: str) -> None:
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self.enabled = enabled is not False
        self.bar = None
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def step(self, n: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def round(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- train


@distributed.lost_peers_as_error()
def train(
    config: TrainConfig,
    *,
    data: Any = None,
    progress: bool | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    measure: bool = True,
) -> RunResults:
    """Train one run into `config.run_dir` and return its results (also in results.json).

    `data` is a `medbench.data.MedMNISTData` (loaded from `config` when None). With
    `resume=True` an existing `checkpoint.pt` in the run folder is continued. `callbacks`
    (medbench.callbacks) see every round's record and model; one may raise to stop the run.
    `measure=False` skips the latency/throughput measurement (tuning trials need only
    the validation metric); those timing fields are then None.

    Under torchrun every process calls this; each returns rank 0's results, and the callbacks
    run on rank 0 only.
    """
    from medbench.data import load_dataset
    from medbench.models import build_model, count_flops, count_parameters

    config.validate()
    runtime = resolve_runtime(config.device, config.precision, config.channels_last)
    runtime = distributed.setup(runtime)  # under torchrun: join the job, this process's GPU
    dist_on, is_main = distributed.is_distributed(), distributed.is_main()
    world, rank = distributed.world_size(), distributed.rank()
    if not is_main:
        progress = False
    if data is None:
        with distributed.local_main_first():  # one download per machine, not per process
            data = load_dataset(
                config.dataset, config.size, config.data_dir, progress=progress is not False
            )
    if data.info.name != config.dataset or data.size != config.size:
        raise MedbenchError(
            f"the data given is {data.info.name} at {data.size}px but the config asks for "
            f"{config.dataset} at {config.size}px"
        )
    info = data.info
    task, n_classes, in_channels = info.task, info.n_classes, info.n_channels
    run_dir = distributed.on_main(lambda: _make_run_dir(config))  # rank 0's folder, made there
    config.run_dir = str(run_dir)
    checkpoint_path = run_dir / "checkpoint.pt"

    # ---- model, optimiser, loss
    seed_everything(config.seed)
    options = dict(config.model_options)
    if config.drop_path is not None:
        options["drop_path"] = config.drop_path
    if config.dropout is not None:
        options["dropout"] = config.dropout
    model = build_model(config.model, in_channels, n_classes, image_size=config.size, **options)
    n_params = count_parameters(model)
    flops = count_flops(model, (in_channels, config.size, config.size))
    lr_scales = None
    if config.pretrained:  # load weights, freeze or scale the backbone (medbench.transfer)
        from medbench.transfer import prepare_pretrained

        lr_scales = prepare_pretrained(model, config)
    place_model(model, runtime)
    eval_copy = None
    if dist_on:
        # Rank 0 validates alone, so it needs a copy with plain BatchNorm (SyncBatchNorm in
        # train mode, as in BN recalibration, would wait for the other processes).
        eval_copy = copy.deepcopy(model) if is_main else None
        if runtime.device.type == "cuda":
            # BN statistics over the whole global batch, as in one process. SyncBatchNorm
            # runs on GPUs only: on CPUs (gloo) each process normalises its own share.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(model, config, lr_scales)
    scaler = runtime.grad_scaler()
    ema = None
    if config.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    train_split = data.train
    loss_fn = make_loss(config, task, train_split.labels, n_classes, runtime.device)
    augment = BatchAugment(config.augment, info.name)
    mixer = (
        BatchMix(config.mixup, config.cutmix, n_classes, task)
        if (config.mixup or config.cutmix)
        else None
    )
    sample_weights = (
        balanced_sample_weights(train_split.labels, task, n_classes)
        if config.class_balance == "sampler"
        else None
    )

    n_train = len(train_split)
    batch_size = min(
        default_batch_size(n_train) if config.batch_size is None else config.batch_size, n_train
    )
    if batch_size % world:
        raise MedbenchError(
            f"the batch of {batch_size} images (the global batch, shared by all processes) does "
            f"not split evenly over {world} processes; use a --batch-size that is a multiple of {world}"
        )
    shard = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    steps_per_epoch = max(1, n_train // batch_size)  # drop the ragged last batch (BatchNorm)
    identity = {
        "dataset": config.dataset,
        "size": config.size,
        "model": config.model,
        "model_options": options,
        "in_channels": in_channels,
        "num_classes": n_classes,
    }

    # ---- state (fresh, or from the checkpoint)
    step, history, train_seconds = 0, [], 0.0
    best: dict[str, Any] = {"score": -math.inf, "round": 0, "step": 0}
    best_state: dict[str, torch.Tensor] | None = None
    budget = config.time_budget_seconds
    if config.epochs is not None or budget is None:
        epochs = config.epochs or DEFAULT_EPOCHS
        total_steps, round_steps, planned = epochs * steps_per_epoch, steps_per_epoch, True
    else:  # provisional until the first steps are timed
        total_steps, round_steps, planned = 10**9, steps_per_epoch, False
    # Rank 0 reads the checkpoint and hands it to the others (their machines may not see
    # the run folder).
    state = distributed.on_main(
        lambda: (
            _load_checkpoint(checkpoint_path, identity)
            if resume and checkpoint_path.exists()
            else None
        )
    )
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if state.get("grad_scaler"):  # fp16 runs; empty for a disabled scaler
            scaler.load_state_dict(state["grad_scaler"])
        step, history, train_seconds = state["step"], state["history"], state["train_seconds"]
        total_steps, round_steps, planned = (
            state["total_steps"],
            state["round_steps"],
            state["planned"],
        )
        best, best_state = state["best"], state["best_state"]
        torch.set_rng_state(state["rng_cpu"])
        if runtime.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], runtime.device)

    def save_checkpoint() -> None:
        ckpt.save(
            {
                "format": ckpt.CHECKPOINT_FORMAT,
                "format_version": ckpt.FORMAT_VERSION,
                "identity": identity,
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "grad_scaler": scaler.state_dict(),
                "best": best,
                "best_state": best_state,
                "step": step,
                "total_steps": total_steps,
                "round_steps": round_steps,
                "planned": planned,
                "history": history,
                "train_seconds": train_seconds,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(runtime.device)
                if runtime.device.type == "cuda"
                else None,
            },
            checkpoint_path,
        )

    eval_source = ema.module if ema is not None else model
    eval_model = eval_copy if dist_on else eval_source  # refreshed from the source each round
    # Model selection validates on a fixed sample when the validation split is large.
    sel_images, sel_labels = data.val.images, data.val.labels
    if len(data.val) > SELECTION_VAL_IMAGES:
        pick = _fixed_sample(len(data.val), SELECTION_VAL_IMAGES, config.seed + 1)
        sel_images, sel_labels = sel_images[pick], sel_labels[pick]
    val_y = labels_numpy(sel_labels)
    select_last = config.select_metric == "last"  # keep the final weights, whatever val says
    cbs = CallbackList(callbacks if is_main else ())
    run_info = RunInfo(
        config, run_dir, steps_per_epoch, batch_size, total_steps if planned else 0, step
    )
    cbs.on_train_start(run_info)
    bar = _Progress(
        progress, total_steps if planned else 0, f"{config.dataset}/{config.model}/s{config.seed}"
    )
    images, labels = train_split.images, train_split.labels
    if runtime.device.type == "cuda" and _fits_on_gpu(images.nbytes, runtime.device):
        # The uint8 training split on the GPU, once: no copy from host memory at every step.
        images, labels = images.to(runtime.device), labels.to(runtime.device)
    # A fixed sample of training images for BatchNorm recalibration before each validation.
    bn_images = images[_fixed_sample(n_train, PRECISE_BN_IMAGES, config.seed)]
    order_epoch, order = -1, None
    aug_gen = torch.Generator(device=runtime.device if runtime.device.type == "cuda" else "cpu")
    stopped_early = over_budget = False
    round_start_time, round_start_step, round_loss, round_n = time.perf_counter(), step, 0.0, 0
    calib_start = None
    run_start = time.perf_counter() - train_seconds
    round_walls: list[float] = []  # wall time of each whole round
    round_trains: list[float] = []  # the training part of each (the rest: validation, checkpoint)
    train_model = model
    if dist_on:
        # DDP averages the gradients of equal shares: the gradient of the global batch's
        # mean loss, as in one process.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )

    def read_loss(loss: torch.Tensor, n: int, at_step: int) -> None:
        nonlocal round_loss, round_n
        # The global batch's loss, the same on every process (so all stop on divergence).
        value = distributed.mean(loss) if dist_on else loss.item()
        if not math.isfinite(value):
            raise MedbenchError(
                f"training diverged (loss {value}) at step {at_step}; lower --lr or enable --grad-clip"
            )
        round_loss += value * n
        round_n += n
        bar.step(1, value)

    pending = None  # (loss, batch size, step) of the last step, not read yet

    # ---- the loop
    model.train()
    while step < total_steps:
        if dist_on and step == round_start_step:
            # Dropout/drop-path: one random stream per process (not one shared by all),
            # restarted each round so that a resumed run continues it.
            torch.manual_seed(config.seed * 1_000_003 + step * 1_009 + rank)
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = epoch_order(n_train, config.seed, epoch, sample_weights).to(images.device)
            order_epoch = epoch
        idx = order[pos * batch_size : (pos + 1) * batch_size]
        x = to_unit_float(images[idx], runtime)
        y = labels[idx].to(runtime.device, non_blocking=True)
        aug_gen.manual_seed(config.seed * 1_000_003 + step)
        x = normalize(augment(x, aug_gen))
        if mixer is not None:  # MixUp/CutMix: mixed images, soft targets
            x, y = mixer(x, y, aug_gen)
        if dist_on:  # every process augments the global batch, then trains on its share
            x, y = x[shard], y[shard]
        factor = lr_factor(config, step, total_steps, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * factor * group.get("lr_scale", 1.0)
        with runtime.autocast():
            logits = train_model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)  # skipped when fp16 gradients overflowed
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        # The loss is read one step late: reading it waits for the device to finish the step,
        # and on a GPU that wait would keep the next step's kernels from being queued behind it.
        if pending is not None:
            read_loss(*pending)
        pending = (loss.detach(), len(idx), step)

        # ---- with a time budget: time the first steps, then fix the plan
        if not planned:
            plan = None
            if step == 1:
                calib_start = (time.perf_counter(), step)
            elif step >= min(12, steps_per_epoch) or (
                step >= 3 and time.perf_counter() - run_start > 0.1 * budget
            ):
                plan = _plan_budget(
                    budget,
                    time.perf_counter() - run_start,
                    step,
                    calib_start,
                    steps_per_epoch,
                    len(sel_images) + len(bn_images),  # validation + BN recalibration
                    batch_size // world,  # images per step of the process that validates
                )
            if dist_on:  # rank 0's timing decides for every process
                plan = distributed.broadcast_object(plan)
            if plan is not None:
                (total_steps, round_steps), planned = plan, True
                bar.set_total(total_steps)

        # ---- end of a round: validate, select, checkpoint
        if step % round_steps == 0 or step >= total_steps:
            read_loss(*pending)
            pending = None
            round_seconds = time.perf_counter() - round_start_time
            if is_main:  # rank 0 alone validates, selects, decides and writes
                if dist_on:
                    eval_model.load_state_dict(eval_source.state_dict())
                recalibrate_batchnorm(eval_model, bn_images, runtime, batch_size)
                val_logits = predict_logits(eval_model, sel_images, runtime)
                val_probs = metrics.probabilities_from_logits(val_logits, task)
                record = {
                    "round": len(history) + 1,
                    "step": step,
                    "epochs": step / steps_per_epoch,
                    "train_loss": round_loss / max(1, round_n),
                    "val_loss": _loss_value(loss_fn, val_logits, sel_labels),
                    "val_acc": metrics.official_acc(val_y, val_probs, task),
                    "val_auc": metrics.official_auc(val_y, val_probs, task),
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round_seconds,
                    "train_images_per_second": (step - round_start_step)
                    * batch_size
                    / max(round_seconds, 1e-9),
                }
                history.append(record)
                score = record["val_auc" if select_last else f"val_{config.select_metric}"]
                if not math.isfinite(score):  # AUC undefined (one class in val): fall back to ACC
                    score = record["val_acc"]
                if select_last:  # the final weights are eval_model's own: nothing to copy
                    best, best_state = (
                        {"score": score, "round": record["round"], "step": step},
                        None,
                    )
                elif score > best["score"]:
                    best = {"score": score, "round": record["round"], "step": step}
                    best_state = copy.deepcopy(eval_model.state_dict())
                train_seconds = time.perf_counter() - run_start
                n_rounds = math.ceil(total_steps / round_steps)
                bar.round(
                    f"[{config.dataset}/{config.model}/seed {config.seed}] epoch {record['round']}/{n_rounds} "
                    f"loss {record['train_loss']:.4f} val_acc {record['val_acc']:.4f} "
                    f"val_auc {record['val_auc']:.4f} lr {record['lr']:.2e} {round_seconds:.1f}s "
                    f"{record['train_images_per_second']:.0f} img/s"
                )
                if (
                    config.patience
                    and record["round"] - best["round"] >= config.patience
                    and step < total_steps
                ):
                    stopped_early = True
                if budget is not None and train_seconds > budget * 1.05 and step < total_steps:
                    over_budget = True
                if stopped_early or over_budget:
                    total_steps = step
                elif budget is not None and config.epochs is None:
                    # Re-plan from the last rounds' measured wall time (training,
                    # validation, checkpoint): the first steps' timing can be 10-15% off.
                    now = time.perf_counter()
                    round_walls.append(now - round_start_time)
                    round_trains.append(round_seconds)
                    new_total = _replan_budget(
                        budget,
                        now - run_start,
                        step,
                        total_steps,
                        round_steps,
                        round_walls[-3:],
                        round_trains[-3:],
                    )
                    if new_total != total_steps:
                        total_steps = new_total
                        bar.set_total(total_steps)
                save_checkpoint()
                cbs.on_round_end(
                    RoundEnd(
                        run_info, record, eval_model, runtime, total_steps, best["step"] == step
                    )
                )
                model.train()
            if dist_on:  # the others go on with rank 0's decisions
                total_steps, stopped_early, over_budget = distributed.broadcast_object(
                    (total_steps, stopped_early, over_budget)
                )
            round_start_time, round_start_step, round_loss, round_n = (
                time.perf_counter(),
                step,
                0.0,
                0,
            )
    bar.close()
    if not is_main:  # wait for rank 0's final evaluation, and return its results
        return distributed.broadcast_object(None)
    if over_budget:
        warnings.warn(
            f"{run_dir.name}: time budget exceeded; stopped after {step} steps",
            MedbenchWarning,
            stacklevel=3,  # train's caller (past the lost_peers_as_error decorator)
        )

    # ---- final evaluation of the selected weights
    eval_start = time.perf_counter()
    if best_state is not None:
        eval_model.load_state_dict(best_state)
    results = _evaluate_and_save(
        eval_model,
        data,
        runtime,
        config,
        run_dir,
        n_params=n_params,
        flops=flops,
        options=options,
        extra={
            "rounds_planned": math.ceil(total_steps / round_steps),
            "rounds_completed": len(history),
            "best_round": best["round"],
            "stopped_early": stopped_early,
            "over_budget": over_budget,
            "steps": step,
            "steps_per_epoch": steps_per_epoch,
            "selection_val_images": len(sel_images),
            "history": [RoundRecord.from_json(r) for r in history],
            "distributed": {
                "world_size": world,
                "backend": distributed.backend(),
                "sync_batchnorm": runtime.device.type == "cuda",
            }
            if dist_on
            else None,
        },
        train_seconds=train_seconds,
        measure=measure,
    )
    results.timing.eval_seconds = time.perf_counter() - eval_start
    atomic_write_json(run_dir / "results.json", results.to_json())
    write_model_card(run_dir)  # MODEL_CARD.md: data, config, metrics with 95% CIs, limits
    cbs.on_train_end(results)
    return distributed.broadcast_object(results) if dist_on else results


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    """Whether a training split of `nbytes` takes at most a quarter of the GPU's free memory."""
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def _fixed_sample(n: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of a random sample of min(k, n) of n items, fixed by `seed` (and
    drawn from its own generator, so the global RNG stream is untouched)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def _make_run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedbenchError(
            f"cannot create run folder {run_dir}: {exc.strerror}; choose a writable --out/--run-dir"
        ) from None
    return run_dir


def _load_checkpoint(checkpoint_path: Path, identity: dict) -> dict[str, Any]:
    state = ckpt.load(checkpoint_path, ckpt.CHECKPOINT_FORMAT)
    if state["identity"] != identity:
        raise MedbenchError(
            f"{checkpoint_path} belongs to another run ({_describe(state['identity'])}), not "
            f"{_describe(identity)}; use a new run folder or the matching options"
        )
    return state


def _plan_budget(
    budget: float,
    elapsed: float,
    step: int,
    calib_start,
    steps_per_epoch: int,
    n_eval: int,
    batch_size: int,
) -> tuple[int, int]:
    """Fix (total_steps, round_steps) so that training plus the forward-only passes of each
    round (`n_eval` images: validation and BatchNorm recalibration) fit in `budget`."""
    t0, s0 = calib_start
    step_seconds = (time.perf_counter() - t0) / max(1, step - s0)
    # A validation pass is forward-only (about a third of a training step per image).
    val_seconds = n_eval / batch_size * step_seconds / 3
    available = max(0.0, budget - elapsed)
    epoch_seconds = steps_per_epoch * step_seconds + val_seconds
    if available >= MIN_ROUNDS * epoch_seconds:
        epochs = int(available // epoch_seconds)
        return step + epochs * steps_per_epoch - step % steps_per_epoch, steps_per_epoch
    # Fewer than MIN_ROUNDS epochs fit: cut the budget into rounds, as many as validation
    # allows within EVAL_SHARE of it (at least one: the end of training).
    rounds = max(1, min(MIN_ROUNDS, int(EVAL_SHARE * available // max(val_seconds, 1e-9))))
    total = step + max(rounds, int((available - rounds * val_seconds) // step_seconds))
    return total, max(1, math.ceil(total / rounds))


def _replan_budget(
    budget: float,
    elapsed: float,
    step: int,
    total_steps: int,
    round_steps: int,
    recent_round_seconds: list[float],
    recent_train_seconds: list[float] | None = None,
) -> int:
    """The new `total_steps` after a round ending at `step`: as many more whole rounds as
    still fit in the budget at the slowest of the recent rounds' wall times (training,
    validation, checkpoint), then a shorter last round in the time left over when
    `recent_train_seconds` (the training part of the same rounds) says some training steps
    and that round's validation still fit; none when the run has already reached its end.
    The slowest, not the mean: a plan that overruns loses the end of its cosine schedule (the
    run is cut off before the learning rate has come down), while a cautious one loses less
    than a round. The short last round matters when a round is a large part of the budget
    (a slow model with a costly validation: one round may be half of it)."""
    if step >= total_steps or not recent_round_seconds:
        return total_steps
    per_round = max(recent_round_seconds)
    remaining = max(0.0, budget - elapsed)
    rounds_left = int(remaining // max(per_round, 1e-9))
    extra = 0
    if recent_train_seconds:
        step_seconds = max(recent_train_seconds) / round_steps
        overhead = max(
            w - t for w, t in zip(recent_round_seconds, recent_train_seconds, strict=True)
        )
        leftover = remaining - rounds_left * per_round - overhead
        extra = min(round_steps - 1, max(0, int(leftover // max(step_seconds, 1e-9))))
    return step + rounds_left * round_steps + extra


def _loss_value(loss_fn: Callable, logits: np.ndarray, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(loss_fn(torch.from_numpy(logits), labels))


def _describe(identity: dict) -> str:
    return f"{identity['model']} on {identity['dataset']} at {identity['size']}px"


# ----------------------------------------------------------------------------- evaluation


def _evaluate_and_save(
    model: nn.Module,
    data: Any,
    runtime: Runtime,
    config: TrainConfig,
    run_dir: Path,
    *,
    n_params: int,
    flops: int,
    options: dict,
    extra: dict,
    train_seconds: float,
    measure: bool = True,
) -> RunResults:
    info, task = data.info, data.info.task
    val_logits = predict_logits(model, data.val.images, runtime)
    test_logits = predict_logits(model, data.test.images, runtime)
    val_y, test_y = labels_numpy(data.val.labels), labels_numpy(data.test.labels)
    temperature = metrics.fit_temperature(val_logits, val_y, task)
    val_m = metrics.evaluate(
        val_y, metrics.probabilities_from_logits(val_logits, task), task, info.label_names
    )
    test_m = metrics.evaluate(
        test_y, metrics.probabilities_from_logits(test_logits, task), task, info.label_names
    )
    test_probs_cal = metrics.probabilities_from_logits(test_logits, task, temperature)
    val_probs_cal = metrics.probabilities_from_logits(val_logits, task, temperature)
    flags = metrics.collapse_check(
        val_m, test_m, n_classes=info.n_classes, task=task, margin=config.collapse_margin
    )
    for flag in flags:
        warnings.warn(f"COLLAPSE GUARD {run_dir.name}: {flag}", MedbenchWarning, stacklevel=4)
    latency_ms, throughput = (
        measure_speed(model, runtime, info.n_channels, config.size) if measure else (None, None)
    )

    with atomic_path(run_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            val_logits=val_logits,
            val_labels=val_y,
            test_logits=test_logits,
            test_labels=test_y,
            test_probs=test_probs_cal,
            temperature=np.float64(temperature),
        )
    model_meta = {
        "model": config.model,
        "model_options": options,
        "in_channels": info.n_channels,
        "num_classes": info.n_classes,
        "image_size": config.size,
        "task": task,
        "label_names": list(info.label_names),
        "dataset": info.name,
        "normalization": {"mean": MEAN, "std": STD},
        "temperature": float(temperature),
        "seed": config.seed,
    }
    ckpt.save(
        {
            "format": ckpt.MODEL_FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            **model_meta,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        run_dir / "model.pt",
    )
    return RunResults(
        run_dir=str(run_dir),
        config=config.to_dict(),
        dataset=data.provenance(),
        model=ModelInfo(config.model, n_params, flops, options),
        metrics={
            "val": val_m,
            "test": test_m,
            "temperature": float(temperature),
            "val_ece_calibrated": metrics.expected_calibration_error(val_y, val_probs_cal, task),
            "test_ece_calibrated": metrics.expected_calibration_error(test_y, test_probs_cal, task),
        },
        timing=Timing(train_seconds, None, latency_ms, throughput),
        flags=flags,
        efficiency=100.0 * test_m["acc"] / (n_params / 1e6),
        environment=environment(runtime),
        files={
            "checkpoint": "checkpoint.pt",
            "model": "model.pt",
            "predictions": "predictions.npz",
            "results": "results.json",
            "model_card": "MODEL_CARD.md",
        },
        **extra,
    )


# ----------------------------------------------------------------------------- saved models


def evaluate_run(
    run: str | Path, *, data_dir: str | None = None, device: str = "auto", progress: bool = True
) -> dict[str, Any]:
    """Re-evaluate a finished run's model on its dataset's validation and test splits."""
    from medbench.data import load_dataset

    model, meta = load_trained_model(run)
    runtime = resolve_runtime(device, "auto", True)
    place_model(model, runtime)
    data = load_dataset(meta["dataset"], meta["image_size"], data_dir, progress=progress)
    out: dict[str, Any] = {
        "model": meta["model"],
        "dataset": data.provenance(),
        "temperature": meta["temperature"],
    }
    for split in ("val", "test"):
        s = data.split(split)
        logits = predict_logits(model, s.images, runtime)
        y = labels_numpy(s.labels)
        out[split] = metrics.evaluate(
            y,
            metrics.probabilities_from_logits(logits, meta["task"]),
            meta["task"],
            meta["label_names"],
        )
        out[split]["ece_calibrated"] = metrics.expected_calibration_error(
            y,
            metrics.probabilities_from_logits(logits, meta["task"], meta["temperature"]),
            meta["task"],
        )
    out["flags"] = metrics.collapse_check(
        out["val"], out["test"], n_classes=meta["num_classes"], task=meta["task"]
    )
    return out
