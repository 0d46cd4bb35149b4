"""Training speed of the model zoo on this machine, beside resnet18, in one run.

Measures training images/s (forward + backward + AdamW step on a random batch) of every
model at one image size, and of a few models under each precision / memory-format mode.
Models and modes are interleaved within each repeat and the median over repeats is
reported, so load from other processes hits every entry alike; ratios vs resnet18 are
the robust figure.

    # every model, fp32 with and without channels-last, one results row per (model, mode)
    python benchmarks/model_speed.py --modes fp32 fp32+CL \
        --csv docs/results/model-speed-epyc-avx2-torch2.11.csv
    # precision / memory format for three models
    python benchmarks/model_speed.py --models resnet18 advanced_cnn efficientnet \
        --modes fp32 fp32+CL bf16 bf16+CL --batch 32
    # the same on a CUDA GPU (bf16 autocast on the GPU; timed between device syncs)
    python benchmarks/model_speed.py --device cuda --models resnet18 advanced_cnn \
        efficientnet --modes fp32 fp32+CL bf16 bf16+CL --size 224 --steps 10

Two tables are printed: every model in the mode fastest for the reference model (with its
parameters and GFLOPs at each image size), and every model in every mode. `--csv` rows
hold both: one per (model, mode), with the ratio to the reference model in that mode.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import time

import torch
from torch import nn

from _common import add_csv_arguments, append_csv
from medbench.models import build_model, count_flops, count_parameters, list_models

MODES = {  # name -> (bf16 autocast, channels_last)
    "fp32": (False, False),
    "fp32+CL": (False, True),
    "bf16": (True, False),
    "bf16+CL": (True, True),
}
SIZES = (28, 64, 128, 224)


class Trainer:
    """One model, its optimiser and a fixed random batch, ready to time training steps."""

    def __init__(
        self,
        name: str,
        size: int,
        batch: int,
        channels: int,
        classes: int,
        mode: str,
        device: str = "cpu",
    ):
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.bf16, channels_last = MODES[mode]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(name, channels, classes, size).to(self.device)
        self.model = model.to(memory_format=fmt).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        x = torch.randn(batch, channels, size, size, device=self.device)
        self.x = x.contiguous(memory_format=fmt)
        self.y = torch.randint(0, classes, (batch,), device=self.device)
        self.loss = nn.CrossEntropyLoss()

    def sync(self) -> None:
        if self.device.type == "cuda":  # GPU work is asynchronous: wait before reading a clock
            torch.cuda.synchronize(self.device)

    def step(self) -> None:
        amp = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with amp:
            loss = self.loss(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def images_per_second(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return steps * self.x.shape[0] / (time.perf_counter() - start)


def measure(
    entries: list[tuple[str, str]],
    size: int,
    batch: int,
    steps: int,
    repeats: int,
    device: str = "cpu",
) -> dict[tuple[str, str], float]:
    """Median training images/s of each (model, mode), interleaved within each repeat."""
    trainers = {(m, mode): Trainer(m, size, batch, 3, 7, mode, device) for m, mode in entries}
    for t in trainers.values():  # warm-up: allocator, oneDNN / cuDNN kernel selection
        for _ in range(1 if device == "cpu" else 3):
            t.step()
        t.sync()
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in trainers}
    keys = list(trainers)
    for r in range(repeats):
        # Rotate the order so no entry always runs right after the same neighbour.
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            samples[key].append(trainers[key].images_per_second(steps))
            print(
                f"  repeat {r + 1}/{repeats} {key[0]:>14} {key[1]:>8}: {samples[key][-1]:7.1f} img/s",
                flush=True,
            )
    return {k: statistics.median(v) for k, v in samples.items()}


@functools.cache
def model_facts(name: str) -> dict[str, str]:
    """Parameters (millions) and GFLOPs at each image size of a 3-channel, 7-class `name`."""
    facts = {"params": f"{count_parameters(build_model(name, 3, 7, 28)) / 1e6:.2f}"}
    for s in SIZES:
        facts[f"gflops_{s}"] = f"{count_flops(build_model(name, 3, 7, s), (3, s, s)) / 1e9:.3f}"
    return facts


def csv_rows(
    models: list[str], speed: dict[tuple[str, str], float], args: argparse.Namespace
) -> list[dict[str, str]]:
    """One results row per (model, mode) measured."""
    setting = {"size": args.size, "batch": args.batch, "steps": args.steps,
               "repeats": args.repeats, "threads": args.threads, "device": args.device,
               "cudnn_benchmark": args.cudnn_benchmark}  # fmt: skip
    rows = []
    for name in models:
        facts = model_facts(name)
        for mode in args.modes:
            ips = speed[(name, mode)]
            rows.append({"model": name, "mode": mode, **setting, **facts,
                         "train_images_per_second": f"{ips:.1f}",
                         "vs_reference": f"{ips / speed[(args.reference, mode)]:.2f}",
                         "reference": args.reference})  # fmt: skip
    return rows


def model_table(
    models: list[str], speed: dict[tuple[str, str], float], reference: str, mode: str
) -> str:
    header = [
        "model",
        "params (M)",
        *(f"GFLOPs @{s}" for s in SIZES),
        "train img/s",
        f"vs {reference}",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ref = speed[(reference, mode)]
    for name in models:
        facts = model_facts(name)
        ips = speed[(name, mode)]
        rows.append(
            f"| {name} | {facts['params']} | "
            + " | ".join(facts[f"gflops_{s}"] for s in SIZES)
            + f" | {ips:.1f} | {ips / ref:.2f}x |"
        )
    return "\n".join(rows)


def mode_table(models: list[str], modes: list[str], speed: dict[tuple[str, str], float]) -> str:
    rows = ["| model | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for name in models:
        rows.append(f"| {name} | " + " | ".join(f"{speed[(name, m)]:.1f}" for m in modes) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["fp32", "fp32+CL"])
    parser.add_argument("--reference", default="resnet18")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1, help="training steps per sample")
    parser.add_argument("--repeats", type=int, default=3, help="samples per entry (median kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (CUDA)"
    )
    add_csv_arguments(parser, "(model, mode)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    models = list(dict.fromkeys([args.reference, *args.models]))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA GPU is visible")
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        where = (
            f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, cudnn.benchmark {args.cudnn_benchmark})"
        )
    else:
        where = f"{platform.machine()} ({os.cpu_count()} cores, shared), {args.threads} thread(s)"
    context = (
        f"torch {torch.__version__}, {where}, "
        f"batch {args.batch}, {args.size} px, 3 channels, 7 classes, "
        f"forward+backward+AdamW, median of {args.repeats} samples x {args.steps} step(s)"
    )
    print(context)
    speed = measure([(m, mode) for m in models for mode in args.modes], args.size, args.batch,
                    args.steps, args.repeats, args.device)  # fmt: skip
    # The model table reports each model in the mode that is fastest for the reference model.
    best = max(args.modes, key=lambda mode: speed[(args.reference, mode)])
    tables = {
        "models": f"_{context}; train img/s in {best}._\n\n"
        + model_table(models, speed, args.reference, best),
        "modes": f"_{context}; train img/s._\n\n" + mode_table(models, args.modes, speed),
    }
    print(f"\n{tables['models']}\n\n{tables['modes']}")
    if args.csv:
        append_csv(args.csv, csv_rows(models, speed, args), args.machine, args.device)


if __name__ == "__main__":
    main()
