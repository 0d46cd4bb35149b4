"""The training engine: one run = one model trained on one dataset with one seed.

`train()` is the loop; read it top to bottom. Named pieces own the rest:
`medbench.training.budget` (how many steps, under a time budget too), `medbench.training.selection` (which
round's weights to keep, early stopping), `medbench.training.checkpoint` (what a resumed run
continues from), `medbench.training.distributed.Coordinator` (one process or a torchrun job),
`medbench.training.evaluation` (per-round validation, the final metrics, the files written) and
`medbench.training.callbacks` (how progress bars, tuners and benchmarks watch a run). The engine
knows nothing of a particular architecture, and models know nothing of devices,
precision or checkpoints.

Every random choice (data order, augmentation) is derived from (seed, epoch) or
(seed, step), and the global RNG state is checkpointed, so a resumed run on the CPU ends
with exactly the weights of an uninterrupted one. Per-round validation uses a fixed sample
of at most `SELECTION_VAL_IMAGES` validation images; the final evaluation uses all of them.

Under `torchrun` (docs/distributed.md) the same loop runs in every process: each trains on
its equal share of every global batch, and rank 0 alone validates, decides, writes files
and prints, then tells the others what it decided.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medbench.data import MedMNISTData, load_dataset
from medbench.data.augment import BatchAugment, BatchMix, check_policy
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import (
    build_model,
    check_spatial_dims,
    count_flops,
    count_parameters,
    model_label,
)
from medbench.runs.results import ModelInfo, RoundRecord, RunResults, Timing, read_results
from medbench.training import checkpoint as ckpt
from medbench.training import distributed
from medbench.training.budget import BudgetPlanner, Clock
from medbench.training.callbacks import Callback, CallbackList, RoundEnd, RunInfo
from medbench.training.config import TrainConfig
from medbench.training.distributed import Coordinator
from medbench.training.evaluation import (
    ValidationSample,
    evaluate_final,
    fixed_sample,
    recalibrate_batchnorm,
    validate_round,
    warn_collapse,
    write_model_files,
)
from medbench.training.inference import measure_speed, normalize, to_unit_float
from medbench.training.modelcard import write_model_card
from medbench.training.pretrained import prepare_pretrained
from medbench.training.progress import ProgressBar
from medbench.training.recipe import (
    DEFAULT_EPOCHS,
    LossFn,
    balanced_sample_weights,
    default_batch_size,
    epoch_order,
    lr_factor,
    make_loss,
    make_optimizer,
)
from medbench.training.selection import Selector
from medbench.utils.fsutil import atomic_write_json
from medbench.utils.runtime import (
    Runtime,
    environment,
    place_model,
    resolve_runtime,
    seed_everything,
)

PRECISE_BN_IMAGES = 1024
SELECTION_VAL_IMAGES = 2048  # per-round validation sample on large validation splits


# ----------------------------------------------------------------------------- train


@distributed.lost_peers_as_error()
def train(
    config: TrainConfig,
    *,
    data: MedMNISTData | None = None,
    progress: bool | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    measure: bool = True,
    clock: Clock = time.perf_counter,
    runtime: Runtime | None = None,
    selection_val_images: int = SELECTION_VAL_IMAGES,
) -> RunResults:
    """Train one run into `config.run_dir` and return its results (also in results.json).

    `data` is a `medbench.data.MedMNISTData` (loaded from `config` when None). With
    `resume=True` the run folder's `checkpoint.pt`, if any, is continued. `progress`: a bar
    (True), one line per round (None, when not on a terminal) or silence (False).
    `callbacks` (medbench.training.callbacks) see every round's record and model; one may raise to
    stop the run. `measure=False` skips the latency/throughput measurement (tuning trials
    need only the validation metric). `clock` is where every wall-time reading comes from;
    `runtime` (device, precision) is resolved from the config when None;
    `selection_val_images` caps the validation sample each round selects on.

    Under torchrun every process calls this; each returns rank 0's results, and the
    callbacks run on rank 0 only.
    """
    config.validate()
    if resume and not config.run_dir:
        raise MedbenchError("resuming needs the interrupted run's folder (--run-dir)")
    runtime = runtime or resolve_runtime(config.device, config.precision, config.channels_last)
    coord = Coordinator.join(runtime)  # under torchrun: join the job, on this process's device
    data = _load_data(config, data, coord, progress)
    run = _build(config, data, coord, selection_val_images, resume)
    saved = coord.on_main(lambda: _read_checkpoint(run) if resume else None)
    state = (
        ckpt.restore_training(saved, run.parts(), run.runtime.device)
        if saved
        else ckpt.TrainingState()
    )
    planner = run.planner(clock, state)
    selector = run.selector(state)
    cbs = CallbackList(_callbacks(progress, callbacks) if coord.main else [])
    cbs.on_train_start(run.info(planner, state.step))
    train_model = coord.wrap(run.model)
    losses = LossMeter(coord, cbs)
    stop = _Stop()

    run.model.train()
    planner.start(state.train_seconds)
    round_start, round_start_step = clock(), state.step
    while state.step < planner.total_steps:
        if state.step == round_start_step:
            coord.seed_round(config.seed, state.step)
        x, y, n = run.batch(state.step)
        done = planner.schedule_fraction(state.step)  # None: the schedule's own step count
        factor = lr_factor(config, state.step, planner.total_steps, run.steps_per_epoch, done)
        loss = run.optimizer_step(train_model, x, y, factor)
        state.step += 1
        losses.push(loss, n, state.step)
        _plan_step(planner, coord, cbs, state.step)  # a time budget's first plan, deadline
        if planner.round_ends(state.step):  # validate, select, decide, save, notify
            train_loss = losses.mean()  # on every process: the loss is averaged over them
            round_seconds = clock() - round_start
            if coord.main:
                timing = (round_seconds, round_start, round_start_step)
                _end_round(run, state, planner, selector, stop, cbs, train_loss, timing)
            decided = (planner.total_steps, stop.early, stop.over_budget)
            planner.total_steps, stop.early, stop.over_budget = coord.broadcast(decided)
            round_start, round_start_step = clock(), state.step
    if not coord.main:  # wait for rank 0's final evaluation, and return its results
        return coord.receive(RunResults)
    results = _finish(run, state, planner, selector, stop, clock, measure)
    cbs.on_train_end(results)
    return coord.broadcast(results)


def _plan_step(planner: BudgetPlanner, coord: Coordinator, cbs: CallbackList, step: int) -> None:
    """After `step`: under a time budget, fix the plan once the first steps are timed; in the
    last round, which no re-plan follows, end training where its validation still fits.
    Rank 0's clock decides both; whether to ask it follows from step counts alone, so
    every process of a torchrun job asks alike."""
    if not planner.planned:
        plan = coord.broadcast(planner.first_plan(step))
        if plan is not None:
            planner.apply(plan)
            cbs.on_plan(planner.total_steps)
    if planner.in_last_round(step) and coord.broadcast(planner.deadline_reached(step)):
        planner.stop_at(step)


def steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    """Optimiser steps in one epoch of `n_train` images (the ragged last batch is dropped)."""
    batch_size = min(config.batch_size or default_batch_size(n_train), n_train)
    return max(1, n_train // batch_size)


def measure_step_seconds(
    config: TrainConfig,
    data: MedMNISTData,
    *,
    steps: int = 3,
    clock: Clock = time.perf_counter,
    runtime: Runtime | None = None,
) -> float:
    """Wall seconds per optimiser step of `config` on this machine: `steps` steps timed after
    one untimed warm-up step, in a throw-away folder (nothing of the run is kept). What a
    grid's plan multiplies by the steps a budget buys."""
    runtime = runtime or resolve_runtime(config.device, config.precision, config.channels_last)
    with tempfile.TemporaryDirectory(prefix="medbench-speed-") as folder:
        probe = dataclasses.replace(
            config, run_dir=folder, model_options=dict(config.model_options)
        )
        run = _build(
            probe, _load_data(probe, data, Coordinator(runtime), False), Coordinator(runtime), 1
        )
        run.model.train()
        for i in range(steps + 1):
            if i == 1:
                start = clock()
            x, y, _ = run.batch(i)
            run.optimizer_step(run.model, x, y, 1.0).item()  # .item(): wait for the device
        return (clock() - start) / steps


# ----------------------------------------------------------------------------- the pieces


@dataclass
class _Stop:
    early: bool = False  # patience ran out
    over_budget: bool = False  # a slow machine: stopped at a round's end past the budget


class LossMeter:
    """The round's mean training loss. A step's loss is read one step late: reading it waits
    for the device to finish the step, and on a GPU that wait would keep the next step's
    kernels from being queued behind it."""

    def __init__(self, coord: Coordinator, cbs: Callback) -> None:
        self.coord, self.cbs = coord, cbs
        self.pending: tuple[torch.Tensor, int, int] | None = None
        self.total, self.n = 0.0, 0

    def push(self, loss: torch.Tensor, n: int, step: int) -> None:
        if self.pending is not None:
            self._read(*self.pending)
        self.pending = (loss.detach(), n, step)

    def mean(self) -> float:
        """The mean over the round's steps (all read now); starts the next round."""
        if self.pending is not None:
            self._read(*self.pending)
            self.pending = None
        value, self.total, self.n = self.total / max(1, self.n), 0.0, 0
        return value

    def _read(self, loss: torch.Tensor, n: int, step: int) -> None:
        value = self.coord.loss_value(loss)
        if not math.isfinite(value):
            raise MedbenchError(
                f"training diverged (loss {value}) at step {step}; lower --lr or enable --grad-clip"
            )
        self.total += value * n
        self.n += n
        self.cbs.on_step(step, value)


@dataclass
class _Run:
    """Everything one run trains with, built once by `_build`."""

    config: TrainConfig
    data: MedMNISTData
    coord: Coordinator
    run_dir: Path
    identity: dict[str, Any]  # what a checkpoint must match to be resumed
    options: dict[str, Any]
    n_params: int
    flops: int
    pretrained_weights: dict[str, str] | None  # source and SHA-256 of --pretrained weights
    model: nn.Module  # the weights that train
    eval_source: nn.Module  # the weights that are validated: the model, or its EMA
    eval_model: nn.Module | None  # what validates them: eval_source or a copy (rank 0 only)
    ema: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: LossFn
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor, int]]
    batch_size: int
    steps_per_epoch: int
    bn_images: torch.Tensor  # un-augmented training images for BatchNorm recalibration
    val_sample: ValidationSample

    @property
    def runtime(self) -> Runtime:
        return self.coord.runtime

    @property
    def validator(self) -> nn.Module:
        """`eval_model` on rank 0, the one process that validates and evaluates."""
        assert self.eval_model is not None, "only rank 0 validates"  # the others hold None
        return self.eval_model

    def parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "ema": self.ema,
            "grad_scaler": self.scaler,
        }

    def planner(self, clock: Clock, state: ckpt.TrainingState) -> BudgetPlanner:
        planner = BudgetPlanner(
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.config.epochs,
            budget_seconds=self.config.time_budget_seconds,
            eval_images=len(self.val_sample) + len(self.bn_images),
            images_per_step=self.batch_size // self.coord.world,
            default_epochs=DEFAULT_EPOCHS,
            clock=clock,
        )
        if state.plan:
            planner.restore(state.plan)
        return planner

    def selector(self, state: ckpt.TrainingState) -> Selector:
        return Selector(self.config.select_metric, self.config.patience, **state.selection)

    def info(self, planner: BudgetPlanner, start_step: int) -> RunInfo:
        total = planner.total_steps if planner.planned else 0
        return RunInfo(
            self.config,
            self.run_dir,
            self.steps_per_epoch,
            self.batch_size,
            total,
            start_step,
            self.model,
        )

    def optimizer_step(
        self, train_model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr_factor: float
    ) -> torch.Tensor:
        config, optimizer, scaler = self.config, self.optimizer, self.scaler
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor * group.get("lr_scale", 1.0)
        with self.runtime.autocast():
            logits = train_model(x)
        loss = self.loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        # torch leaves Tensor.backward unannotated
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if config.grad_clip:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        scaler.step(optimizer)  # skipped when fp16 gradients overflowed
        scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss

    def save_checkpoint(self, state: ckpt.TrainingState) -> None:
        ckpt.save_training(
            self.run_dir / "checkpoint.pt",
            identity=self.identity,
            config=self.config.to_dict(),
            parts=self.parts(),
            state=state,
            device=self.runtime.device,
        )


def _load_data(
    config: TrainConfig, data: MedMNISTData | None, coord: Coordinator, progress: bool | None
) -> MedMNISTData:
    if data is None:
        with distributed.local_main_first():  # one download per machine, not per process
            show = progress is not False and coord.main
            data = load_dataset(config.dataset, config.size, config.data_dir, progress=show)
    if data.info.name != config.dataset or data.size != config.size:
        raise MedbenchError(
            f"the data given is {data.info.name} at {data.size}px but the config asks for "
            f"{config.dataset} at {config.size}px"
        )
    return data


def _build(
    config: TrainConfig,
    data: MedMNISTData,
    coord: Coordinator,
    selection_val_images: int,
    resume: bool = False,
) -> _Run:
    """The model, optimiser, loss and data stream of a run, in a fixed order: every piece
    that draws from the global RNG (the model's initial weights) comes after the seed."""
    info, runtime = data.info, coord.runtime
    seed_everything(config.seed)
    options = dict(config.model_options)
    for key in ("drop_path", "dropout"):
        if getattr(config, key) is not None:
            options[key] = getattr(config, key)
    check_spatial_dims(config.model, info.spatial_dims, info.name)
    check_policy(config.augment, info.name, info.spatial_dims)
    model = build_model(config.model, info.n_channels, info.n_classes, config.size, **options)
    n_params = count_parameters(model)
    flops = count_flops(model, (info.n_channels, *(config.size,) * info.spatial_dims))
    # Pretrained weights: loaded, the backbone frozen or given a lower learning rate.
    lr_scales, weights = prepare_pretrained(model, config) if config.pretrained else (None, None)
    # The folder only once the model builds and its weights load: a mistyped name or a
    # damaged weights file leaves nothing behind.
    run_dir = coord.on_main(lambda: _make_run_dir(config, resume))  # rank 0's, made there
    config.run_dir = str(run_dir)
    place_model(model, runtime)
    model, eval_copy = coord.prepare(model)
    optimizer = make_optimizer(model, config, lr_scales)
    ema = None
    if config.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            # torch leaves get_ema_multi_avg_fn unannotated
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
    eval_source = ema.module if ema is not None else model
    n_train = len(data.train)
    batch_size = min(config.batch_size or default_batch_size(n_train), n_train)
    shard = coord.shard(batch_size) if coord.active else None
    batches = _Batches(config, data, runtime, batch_size, shard)
    return _Run(
        config=config,
        data=data,
        coord=coord,
        run_dir=run_dir,
        identity={
            "dataset": config.dataset,
            "size": config.size,
            "model": config.model,
            "model_options": options,
            "in_channels": info.n_channels,
            "num_classes": info.n_classes,
            # Only for a user's model, so checkpoints of the others resume as before.
            **({"model_source_hash": h} if (h := config.model_source_hash) else {}),
        },
        options=options,
        n_params=n_params,
        flops=flops,
        pretrained_weights=weights,
        model=model,
        eval_source=eval_source,
        eval_model=eval_copy if coord.active else eval_source,
        ema=ema,
        optimizer=optimizer,
        scaler=runtime.grad_scaler(),
        loss_fn=make_loss(config, info.task, data.train.labels, info.n_classes, runtime.device),
        batch=batches,
        batch_size=batch_size,
        steps_per_epoch=batches.steps_per_epoch,
        bn_images=batches.images[fixed_sample(n_train, PRECISE_BN_IMAGES, config.seed)],
        val_sample=ValidationSample.of(data, selection_val_images, config.seed + 1),
    )


class _Batches:
    """Training batch number `step`, a pure function of (seed, step): the order of samples
    is fixed per epoch and the augmentation per step. Every process augments the global
    batch, then trains on its share."""

    def __init__(
        self,
        config: TrainConfig,
        data: MedMNISTData,
        runtime: Runtime,
        batch_size: int,
        shard: slice | None,
    ) -> None:
        info, split = data.info, data.train
        self.config, self.runtime, self.batch_size, self.shard = config, runtime, batch_size, shard
        self.steps_per_epoch = max(1, len(split) // batch_size)  # drop the ragged last batch
        self.images, self.labels = split.images, split.labels
        if runtime.device.type == "cuda" and _fits_on_gpu(self.images.nbytes, runtime.device):
            # The uint8 training split on the GPU, once: no copy from host memory every step.
            self.images, self.labels = (
                self.images.to(runtime.device),
                self.labels.to(runtime.device),
            )
        self.augment = BatchAugment(config.augment, info.name, spatial_dims=info.spatial_dims)
        self.mixer = (
            BatchMix(config.mixup, config.cutmix, info.n_classes, info.task)
            if (config.mixup or config.cutmix)
            else None
        )
        self.sample_weights = (
            balanced_sample_weights(split.labels, info.task, info.n_classes)
            if config.class_balance == "sampler"
            else None
        )
        cuda = runtime.device.type == "cuda"
        self.generator = torch.Generator(device=runtime.device if cuda else "cpu")
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)  # no epoch's order yet

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(images, targets, images in the global batch) of batch `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            order = epoch_order(len(self.images), self.config.seed, epoch, self.sample_weights)
            self._epoch, self._order = epoch, order.to(self.images.device)
        idx = self._order[pos * self.batch_size : (pos + 1) * self.batch_size]
        x = to_unit_float(self.images[idx], self.runtime)
        y = self.labels[idx].to(self.runtime.device, non_blocking=True)
        self.generator.manual_seed(self.config.seed * 1_000_003 + step)
        x = normalize(self.augment(x, self.generator))
        if self.mixer is not None:  # MixUp/CutMix: mixed images, soft targets
            x, y = self.mixer(x, y, self.generator)
        if self.shard is not None:
            x, y = x[self.shard], y[self.shard]
        return x, y, len(idx)


def _end_round(
    run: _Run,
    state: ckpt.TrainingState,
    planner: BudgetPlanner,
    selector: Selector,
    stop: _Stop,
    cbs: Callback,
    train_loss: float,
    timing: tuple[float, float, int],
) -> None:
    """Rank 0's end of a round: validate, select, decide (early stop, over budget, re-plan),
    save the checkpoint, tell the callbacks. `timing`: the round's training seconds, and
    the time and step it started at."""
    round_seconds, round_start, round_start_step = timing
    model, step = run.validator, state.step
    if run.coord.active:  # the validation copy takes the weights that trained
        model.load_state_dict(run.eval_source.state_dict())
    recalibrate_batchnorm(model, run.bn_images, run.runtime, run.batch_size)
    val = validate_round(model, run.val_sample, run.runtime, run.data.info.task, run.loss_fn)
    record = {
        "round": len(state.history) + 1,
        "step": step,
        "epochs": step / run.steps_per_epoch,
        "train_loss": train_loss,
        **val,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round_seconds,
        "train_images_per_second": (step - round_start_step)
        * run.batch_size
        / max(round_seconds, 1e-9),
    }
    state.history.append(record)
    is_best = selector.consider(record, model)
    state.train_seconds = planner.elapsed()
    stop.early = selector.patience_exhausted(record["round"]) and step < planner.total_steps
    stop.over_budget = planner.over_budget(step)
    if stop.early or stop.over_budget:
        planner.stop_at(step)
    elif planner.replan(step, round_start, round_seconds):
        cbs.on_plan(planner.total_steps)
    state.plan, state.selection = planner.state(), selector.state()
    run.save_checkpoint(state)
    model.eval()
    event = RoundEnd(
        run.info(planner, 0),
        record,
        model,
        run.runtime,
        planner.total_steps,
        is_best,
        planner.rounds_planned(),
    )
    cbs.on_round_end(event)
    run.model.train()


def _finish(
    run: _Run,
    state: ckpt.TrainingState,
    planner: BudgetPlanner,
    selector: Selector,
    stop: _Stop,
    clock: Clock,
    measure: bool,
) -> RunResults:
    """Rank 0's end of the run: the selected weights scored on the whole validation and
    test splits, model.pt, predictions.npz, results.json and MODEL_CARD.md written."""
    config, runtime, info = run.config, run.runtime, run.data.info
    if stop.over_budget:
        warnings.warn(
            f"{config.label}: time budget exceeded; stopped after {state.step} steps",
            MedbenchWarning,
            stacklevel=4,  # train's caller (past train and the lost_peers_as_error decorator)
        )
    eval_start, model = clock(), run.validator
    selector.restore_best(model)
    evaluation = evaluate_final(model, run.data, runtime, config.collapse_margin)
    warn_collapse(config.label, evaluation.flags)
    latency_ms, throughput = (
        measure_speed(model, runtime, info.n_channels, config.size, info.spatial_dims)
        if measure
        else (None, None)
    )
    write_model_files(run.run_dir, model, evaluation, config, run.data, run.options)
    results = RunResults(
        run_dir=str(run.run_dir),
        config=config.to_dict(),
        dataset=run.data.provenance(),
        # The name tables and cards show (my_net:build); the config keeps the full one.
        model=ModelInfo(model_label(config.model), run.n_params, run.flops, run.options),
        metrics=evaluation.metrics,
        timing=Timing(state.train_seconds, None, latency_ms, throughput),
        steps=state.step,
        steps_per_epoch=run.steps_per_epoch,
        rounds_planned=planner.rounds_planned(),
        rounds_completed=len(state.history),
        best_round=selector.best["round"],
        stopped_early=stop.early,
        over_budget=stop.over_budget,
        selection_val_images=len(run.val_sample),
        history=[RoundRecord.from_json(r) for r in state.history],
        flags=evaluation.flags,
        efficiency=100.0 * evaluation.metrics["test"]["acc"] / (run.n_params / 1e6),
        environment=environment(runtime),
        files={
            **({"checkpoint": "checkpoint.pt"} if config.keep_checkpoint else {}),
            "model": "model.pt",
            "predictions": "predictions.npz",
            "results": "results.json",
            "model_card": "MODEL_CARD.md",
        },
        distributed=run.coord.describe(),
        batch_size=run.batch_size,
        pretrained_weights=run.pretrained_weights,
    )
    results.timing.eval_seconds = clock() - eval_start
    atomic_write_json(run.run_dir / "results.json", results.to_json())
    write_model_card(run.run_dir)  # MODEL_CARD.md: data, config, metrics with 95% CIs, limits
    if not config.keep_checkpoint:  # finished: model.pt holds what later use needs
        (run.run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return results


def _callbacks(progress: bool | None, callbacks: Sequence[Callback]) -> list[Callback]:
    shown = [] if progress is False else [ProgressBar(tty=progress)]
    return [*shown, *callbacks]


def _read_checkpoint(run: _Run) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint and hands it to the others (their machines may not see
    the run folder)."""
    path = run.run_dir / "checkpoint.pt"
    if not path.exists():
        return None
    state = ckpt.load_training(path, run.identity)
    _check_same_recipe(path, state["config"], run.config.to_dict())
    return state


# What may change when a run is resumed: where and on what it runs, not what it learns.
_RESUMABLE_CHANGES = frozenset(
    {
        "device",
        "precision",
        "channels_last",
        "num_workers",
        "data_dir",
        "run_dir",
        "keep_checkpoint",
        "time_budget_seconds",  # a grid may give a resumed run what is left of its share
        "collapse_margin",  # read at the final evaluation only
    }
)


def _check_same_recipe(path: Path, saved: dict[str, Any], asked: dict[str, Any]) -> None:
    """Refuse to resume with another recipe: the results would record settings the weights
    were not trained with."""
    changed = sorted(
        k
        for k in saved.keys() | asked.keys()
        if k not in _RESUMABLE_CHANGES and saved.get(k) != asked.get(k)
    )
    if changed:
        diff = ", ".join(f"{k} {saved.get(k)!r} -> {asked.get(k)!r}" for k in changed)
        raise MedbenchError(
            f"{path} was trained with another recipe ({diff}); resume with the run's own "
            "options, or train the new recipe in a new --run-dir"
        )


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    """Whether a training split of `nbytes` takes at most a quarter of the GPU's free memory."""
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def default_run_dir(config: TrainConfig, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = model_label(config.model).replace(":", "-").replace("/", "-")  # my_net-build
    return Path(root) / f"{config.dataset}_{config.size}-{name}-seed{config.seed}-{stamp}"


def _make_run_dir(config: TrainConfig, resume: bool) -> Path:
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    check_run_folder(run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedbenchError(
            f"cannot create run folder {run_dir}: {exc.strerror}; choose a writable --out/--run-dir"
        ) from None
    return run_dir


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse to train over a run: a finished run is never overwritten, and an unfinished
    one is continued only when asked to (`resume`)."""
    finished = _finished_run(run_dir)
    has_checkpoint = (run_dir / "checkpoint.pt").exists()
    if finished and not resume:
        raise MedbenchError(
            f"{run_dir} already holds a finished run ({finished}); choose a new --run-dir, "
            "or delete that folder to train it again"
        )
    if finished and not has_checkpoint:
        raise MedbenchError(
            f"{run_dir} holds a finished run ({finished}): there is nothing to resume; its "
            f"results are in {run_dir / 'results.json'}"
        )
    if has_checkpoint and not resume:
        raise MedbenchError(
            f"{run_dir} holds an unfinished run; add --resume to continue it, or choose a "
            "new --run-dir"
        )


def _finished_run(run_dir: Path) -> str | None:
    """'model on dataset' when `run_dir` holds a finished run's results.json, else None."""
    if not (run_dir / "results.json").is_file():
        return None
    try:
        results = read_results(run_dir)
    except MedbenchError:
        return "an unreadable results.json"
    if results.status != "finished":
        return None
    return f"{results.model.name} on {results.config.get('dataset')}"
