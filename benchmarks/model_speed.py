"""Speed of medbench's models on this machine, one subcommand per measurement.

    python benchmarks/model_speed.py train --modes fp32 fp32+CL \\
        --csv docs/results/model-speed-epyc-avx2-torch2.11.csv
    python benchmarks/model_speed.py train-3d \\
        --csv docs/results/volume-speed-epyc-avx512-torch2.14.csv
    python benchmarks/model_speed.py predict --n 10000 --workers 1 4 \\
        --csv docs/results/predict-speed-epyc-avx2.csv

`python benchmarks/model_speed.py SUBCOMMAND --help` describes each.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from _common import add_csv_arguments, add_subcommand, append_csv, tool_parser
from medbench.errors import MedbenchWarning
from medbench.models import build_model, count_flops, count_parameters, list_models
from medbench.serving.predict import predict
from medbench.training import checkpoint as ckpt

# ----------------------------------------------------------------------------- train

TRAIN = """Training speed of the model zoo on this machine, beside resnet18, in one run.

Measures training images/s (forward + backward + AdamW step on a random batch) of every
model at one image size, and of a few models under each precision / memory-format mode.
Models and modes are interleaved within each repeat and the median over repeats is
reported, so load from other processes hits every entry alike; ratios vs resnet18 are
the robust figure.

    # every model, fp32 with and without channels-last, one results row per (model, mode)
    python benchmarks/model_speed.py train --modes fp32 fp32+CL \\
        --csv docs/results/model-speed-epyc-avx2-torch2.11.csv
    # precision / memory format for three models
    python benchmarks/model_speed.py train --models resnet18 advanced_cnn efficientnet \\
        --modes fp32 fp32+CL bf16 bf16+CL --batch 32
    # the same on a CUDA GPU (bf16 autocast on the GPU; timed between device syncs)
    python benchmarks/model_speed.py train --device cuda --models resnet18 advanced_cnn \\
        efficientnet --modes fp32 fp32+CL bf16 bf16+CL --size 224 --steps 10

Two tables are printed: every model in the mode fastest for the reference model (with its
parameters and GFLOPs at each image size), and every model in every mode. `--csv` rows
hold both: one per (model, mode), with the ratio to the reference model in that mode.
"""

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


def prepare_device(args: argparse.Namespace) -> str:
    """Set torch's thread count (and cuDNN's algorithm search on CUDA); say where it runs."""
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA GPU is visible")
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        return (
            f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, cudnn.benchmark {args.cudnn_benchmark})"
        )
    return f"{platform.machine()} ({os.cpu_count()} cores, shared), {args.threads} thread(s)"


def run_train(args: argparse.Namespace) -> None:
    models = list(dict.fromkeys([args.reference, *args.models]))
    context = (
        f"torch {torch.__version__}, {prepare_device(args)}, "
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


def add_train(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "train", TRAIN, run_train)
    p.add_argument("--models", nargs="+", default=list_models())
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["fp32", "fp32+CL"])
    p.add_argument("--reference", default="resnet18")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=1, help="training steps per sample")
    p.add_argument("--repeats", type=int, default=3, help="samples per entry (median kept)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (CUDA)"
    )
    add_csv_arguments(p, "(model, mode)")


# ----------------------------------------------------------------------------- train-3d

TRAIN_3D = """3D training speed: 3D vs ACS vs 2.5D ResNets at 28^3 and 64^3.

Training volumes/s (forward + backward + AdamW step on a fixed random batch of 1-channel
volumes, 11 classes as OrganMNIST3D) of each model at each size. Models are interleaved
within each repeat and the median over repeats is reported, so load from other processes
hits every model alike; the ratio to the first model is the robust figure. The memory of
loading a 64^3 set is `benchmarks/load_memory.py 3d`.

    python benchmarks/model_speed.py train-3d --repeats 3 --steps 1 \\
        --csv docs/results/volume-speed-epyc-avx512-torch2.14.csv
"""

MODELS_3D = ("resnet18_3d", "resnet18_acs", "resnet18_2.5d")
BATCH_3D = {28: 8, 64: 2}  # volumes per step at each size


def volume_speed(
    models: list[str], size: int, batch: int, repeats: int, steps: int
) -> dict[str, float]:
    """{model: median training volumes/s} at `size`^3."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size, size)
    y = torch.randint(0, 11, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    nets = {m: build_model(m, 1, 11, size).train() for m in models}
    opts = {m: torch.optim.AdamW(nets[m].parameters(), lr=1e-3) for m in models}

    def step(m: str) -> None:
        opts[m].zero_grad(set_to_none=True)
        loss_fn(nets[m](x), y).backward()
        opts[m].step()

    for m in models:  # warm-up: first-call allocations and kernel selection
        step(m)
    samples: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(repeats):
        for m in models:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(m)
            samples[m].append(batch * steps / (time.perf_counter() - t0))
    return {m: statistics.median(v) for m, v in samples.items()}


def run_train_3d(args: argparse.Namespace) -> None:
    rows = []
    for size in args.sizes:
        result = volume_speed(args.models, size, BATCH_3D[size], args.repeats, args.steps)
        first = result[args.models[0]]
        for m, v in result.items():
            rows.append({
                "model": m, "size": f"{size}^3", "batch": str(BATCH_3D[size]),
                "threads": str(torch.get_num_threads()), "volumes_s": f"{v:.2f}",
                "vs_first": f"{v / first:.2f}x",
            })  # fmt: skip
            print(rows[-1])
    if args.csv:
        append_csv(args.csv, rows, args.machine)


def add_train_3d(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "train-3d", TRAIN_3D, run_train_3d)
    p.add_argument("--models", nargs="+", default=list(MODELS_3D))
    p.add_argument("--sizes", nargs="+", type=int, choices=list(BATCH_3D), default=[28, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    add_csv_arguments(p, "model and size")


# ----------------------------------------------------------------------------- predict

PREDICT = """End-to-end speed of `medbench.serving.predict.predict` on a folder of PNGs.

Writes `n` random 28x28 PNGs into a temporary folder (a few percent of them 64x64 RGB, so
the conversion path is exercised too), saves an untrained model in the model.pt format
(speed does not depend on the weights) and times `predict()` (decode + convert + infer)
over the folder for each worker count.

    python benchmarks/model_speed.py predict --n 10000 --model efficientnet --channels 3 \\
        --workers 1 2 4
    python benchmarks/model_speed.py predict --csv docs/results/predict-speed-epyc-avx2.csv
"""


def write_pngs(folder: Path, n: int, channels: int, seed: int = 0) -> None:
    """`n` random PNGs in subfolders of 1000; one in 50 is 64x64 RGB, which needs converting."""
    rng = np.random.default_rng(seed)
    for i in range(-(-n // 1000)):
        (folder / f"{i:02d}").mkdir(parents=True)
    for i in range(n):
        if i % 50 == 0:
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        else:
            image = rng.integers(0, 256, (28, 28, channels), dtype=np.uint8)
        Image.fromarray(image.squeeze()).save(folder / f"{i // 1000:02d}" / f"{i:05d}.png")


def save_model(path: Path, name: str, channels: int) -> None:
    model = build_model(name, channels, 8, image_size=28)
    ckpt.save(
        {
            "format": ckpt.MODEL_FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "model": name,
            "model_options": {},
            "in_channels": channels,
            "num_classes": 8,
            "image_size": 28,
            "task": "multi-class",
            "label_names": [f"class {i}" for i in range(8)],
            "dataset": "bloodmnist",
            "normalization": {"mean": 0.5, "std": 0.5},
            "temperature": 1.3,
            "seed": 0,
            "state_dict": model.state_dict(),
        },
        path,
    )


def time_predict(model_file: Path, folder: Path, workers: int, args: argparse.Namespace) -> dict:
    """Predict the folder with `workers` decode threads; print and return its results row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        t0 = time.perf_counter()
        result = predict(model_file, [folder], batch_size=args.batch_size, workers=workers,
                         device=args.device, precision="fp32")  # fmt: skip
        seconds = time.perf_counter() - t0
    print(
        f"{args.model}, {workers} decode thread(s), batch {args.batch_size}: "
        f"{len(result)} images in {seconds:.1f}s = {len(result) / seconds:.0f} images/s "
        f"({result.n_converted} converted)"
    )
    return {"model": args.model, "images": len(result), "channels": args.channels,
            "batch_size": args.batch_size, "workers": workers, "device": args.device,
            "threads": torch.get_num_threads(), "seconds": f"{seconds:.2f}",
            "images_per_second": f"{len(result) / seconds:.0f}",
            "converted": result.n_converted}  # fmt: skip


def run_predict(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="medbench-predict-speed-") as tmp:
        folder = Path(tmp) / "images"
        t0 = time.perf_counter()
        write_pngs(folder, args.n, args.channels)
        print(f"wrote {args.n} PNGs in {time.perf_counter() - t0:.1f}s")
        model_file = Path(tmp) / "model.pt"
        save_model(model_file, args.model, args.channels)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, device {args.device}"
        )
        rows = [time_predict(model_file, folder, workers, args) for workers in args.workers]
    if args.csv:
        append_csv(args.csv, rows, args.machine, args.device)


def add_predict(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "predict", PREDICT, run_predict)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--model", default="efficientnet")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--device", default="cpu")
    add_csv_arguments(p, "worker count")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser, subcommands = tool_parser(__doc__)
    add_train(subcommands)
    add_train_3d(subcommands)
    add_predict(subcommands)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
