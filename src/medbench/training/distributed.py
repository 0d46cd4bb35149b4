"""Training on several processes: a `torchrun` launch, its process group, and who does what.

`torchrun` (PyTorch's own launcher) starts one process per GPU and tells each its place in
the environment: WORLD_SIZE processes in all, this one is RANK, and LOCAL_RANK on its
machine. `setup()` joins them into one process group (NCCL between GPUs, gloo on CPUs) with
a timeout, so a process whose partner died stops with an error instead of waiting forever.
The engine asks the rest: `is_distributed()`, `is_main()` (rank 0, the one process that
writes files and prints), and the few collectives it needs (`mean`, `broadcast_object`,
`on_main`, `barrier`). Without torchrun (or with one process) every helper is a no-op and
training runs exactly as before.

See docs/distributed.md for launches on one machine, several machines and Slurm.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from medbench.errors import MedbenchError
from medbench.training.config import parse_duration
from medbench.utils.runtime import Runtime

T = TypeVar("T")
TIMEOUT_ENV = "MEDBENCH_DIST_TIMEOUT"  # e.g. 600, 10m; how long a process waits for the others
DEFAULT_TIMEOUT_SECONDS = 1800.0  # covers rank 0's final evaluation while the others wait


def launched() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def refuse_launch(command: str) -> None:
    """Commands that run many trainings (benchmark, tune, search) share their work through
    their stores, not a process group: under torchrun every process would run the whole
    job at once, so they refuse with a pointer to how to spread them over GPUs."""
    if launched():
        raise MedbenchError(
            f"'medbench {command}' does not run under torchrun ({os.environ['WORLD_SIZE']} "
            f"processes); start one 'medbench {command}' per GPU (CUDA_VISIBLE_DEVICES=i) "
            "sharing the same output folder or storage: see docs/distributed.md"
        )


def is_distributed() -> bool:
    """True once this process has joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torchrun); read from the environment before setup."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints progress."""
    return rank() == 0


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        return parse_duration(text)
    except MedbenchError:
        raise MedbenchError(
            f"${TIMEOUT_ENV}={text!r} is not a duration; write e.g. 600, 10m or 1h"
        ) from None


def setup(runtime: Runtime) -> Runtime:
    """Join the torchrun job this process belongs to (once) and return the runtime on this
    process's device: GPU number LOCAL_RANK with NCCL, or the CPU with gloo. Outside a
    multi-process torchrun launch the runtime comes back unchanged."""
    if not launched():
        return runtime
    kind = runtime.device.type
    if kind not in ("cuda", "cpu"):
        raise MedbenchError(
            f"training under torchrun runs on CUDA GPUs (NCCL) or CPUs (gloo), not {kind}; "
            "use --device cuda or --device cpu"
        )
    device = torch.device("cpu")
    if kind == "cuda":
        n_gpus = torch.cuda.device_count()
        if local_rank() >= n_gpus:
            raise MedbenchError(
                f"torchrun started process {local_rank()} on a machine with {n_gpus} visible "
                f"GPU(s); use --nproc_per_node {n_gpus} or fewer (one process per GPU)"
            )
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                "nccl" if kind == "cuda" else "gloo", timeout=timedelta(seconds=timeout_seconds())
            )
        except (RuntimeError, ValueError) as exc:
            raise MedbenchError(
                f"process {rank()} could not join the other {world_size() - 1} training "
                f"process(es) at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: "
                f"{_first_line(exc)}; check the torchrun rendezvous options"
            ) from None
    return dataclasses.replace(runtime, device=device)


def cleanup() -> None:
    """Leave the process group (call once the work is done; the CLI does)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def _tensor_device() -> torch.device:
    # NCCL moves only GPU tensors; gloo moves CPU tensors.
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean(value: torch.Tensor) -> float:
    """The mean of a scalar over all processes (the value itself without torchrun)."""
    if not is_distributed():
        return value.item()
    t = value.detach().to(_tensor_device(), torch.float64).reshape(1)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` (any picklable value) on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_tensor_device())
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and return its result on every process; a MedbenchError it
    raises is raised on every process, so none is left waiting for the others."""
    if not is_distributed():
        return fn()
    # A box, not the bare value: `fn` may itself return None.
    box: list[T] = []
    error: str | None = None
    if is_main():
        try:
            box.append(fn())
        except MedbenchError as exc:
            error = str(exc)
    box, error = broadcast_object((box, error))
    if error is not None:
        raise MedbenchError(error)
    return box[0]


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """The first process of each machine runs the block before the others (e.g. to
    download a dataset once per machine, not once per process)."""
    if is_distributed() and local_rank() != 0:
        barrier()
    yield
    if is_distributed() and local_rank() == 0:
        barrier()


# How gloo and NCCL word a partner's death or silence (gloo raises a plain RuntimeError).
_LOST_PEER_WORDS = ("connection closed", "connection reset", "timed out", "timeout", "gloo", "nccl")


@contextlib.contextmanager
def lost_peers_as_error() -> Iterator[None]:
    """Turn the error a process gets when another process of its job died or stopped
    answering (a closed connection, a timeout) into one MedbenchError line. Usable as a
    decorator."""
    try:
        yield
    except RuntimeError as exc:
        lost = isinstance(exc, dist.DistError) or any(
            word in str(exc).lower() for word in _LOST_PEER_WORDS
        )
        if not (lost and is_distributed()):
            raise
        raise MedbenchError(
            f"training process {rank()} of {world_size()} lost contact with the others "
            f"({_first_line(exc)}): another process failed or stopped answering (torchrun's "
            "report names it); the run folder's checkpoint.pt of the last finished round is "
            "intact, so rerun the same command with --resume"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: its first sentence, without gloo's source location."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = re.sub(r"^\[[^\]]*:\d+\]\s*", "", lines[0] if lines else type(exc).__name__)
    return text.split(". ")[0][:200]


@dataclasses.dataclass(frozen=True)
class Coordinator:
    """Who does what in one run: a single process, or every process of a torchrun job.

    The engine asks it instead of branching on torchrun itself: rank 0 (`main`) alone
    validates, decides (budget plan, best round, early stop), writes files and prints, and
    `broadcast` hands its decisions to the others. Without torchrun every method is the
    single-process identity."""

    runtime: Runtime
    active: bool = False  # a multi-process job
    main: bool = True
    world: int = 1
    rank: int = 0

    @classmethod
    def join(cls, runtime: Runtime) -> Coordinator:
        """Join the torchrun job, if launched in one, on this process's device."""
        runtime = setup(runtime)
        return cls(runtime, is_distributed(), is_main(), world_size(), rank())

    def shard(self, batch_size: int) -> slice:
        """This process's share of every global batch of `batch_size` images."""
        if batch_size % self.world:
            raise MedbenchError(
                f"the batch of {batch_size} images (the global batch, shared by all processes) "
                f"does not split evenly over {self.world} processes; use a --batch-size that "
                f"is a multiple of {self.world}"
            )
        return slice(
            self.rank * batch_size // self.world, (self.rank + 1) * batch_size // self.world
        )

    def broadcast(self, obj: T) -> T:
        return broadcast_object(obj) if self.active else obj

    def receive(self, kind: type[T]) -> T:
        """On a process other than rank 0: the `kind` rank 0 broadcasts next."""
        obj: object = self.broadcast(None)
        if not isinstance(obj, kind):
            raise TypeError(f"rank 0 sent {type(obj).__name__}, not {kind.__name__}")
        return obj

    def on_main(self, fn: Callable[[], T]) -> T:
        return on_main(fn)

    def loss_value(self, loss: torch.Tensor) -> float:
        """The global batch's loss, the same on every process (so all stop on divergence)."""
        return mean(loss) if self.active else loss.item()

    def prepare(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(the model to train, rank 0's validation copy or None). Rank 0 validates alone,
        so under torchrun it needs a copy with plain BatchNorm (SyncBatchNorm in train mode,
        as in BN recalibration, would wait for the other processes)."""
        if not self.active:
            return model, None
        eval_copy = copy.deepcopy(model) if self.main else None
        if self.runtime.device.type == "cuda":
            # BN statistics over the whole global batch, as in one process. SyncBatchNorm
            # runs on GPUs only: on CPUs (gloo) each process normalises its own share.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, eval_copy

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: under torchrun, DistributedDataParallel, which
        averages the gradients of equal shares (the gradient of the global batch's mean loss,
        as in one process)."""
        if not self.active:
            return model
        device = self.runtime.device
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def seed_round(self, seed: int, step: int) -> None:
        """Dropout/drop-path under torchrun: one random stream per process (not one shared
        by all), restarted each round so that a resumed run continues it."""
        if self.active:
            torch.manual_seed(seed * 1_000_003 + step * 1_009 + self.rank)

    def describe(self) -> dict | None:
        if not self.active:
            return None
        return {
            "world_size": self.world,
            "backend": backend(),
            "sync_batchnorm": self.runtime.device.type == "cuda",
        }
