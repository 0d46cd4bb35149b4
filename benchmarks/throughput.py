"""Training throughput: medbench's pipeline vs a faithful copy of the official MedMNIST one.

The official pipeline (MedMNIST experiments, `train_and_eval_pytorch.py`): medmnist's own
Dataset class (one PIL image per sample), `ToTensor()` + `Normalize(mean=[.5], std=[.5])`
per image through a `DataLoader(batch_size=128, shuffle=True)`, fp32, Adam(lr=1e-3),
cross-entropy, the ResNet-18 with the 3x3 stride-1 stem at 28px. medbench's pipeline is
`medbench.training.engine.train` with its defaults (uint8 tensors in memory, batched augmentation on
the device, the runtime's precision/memory-format choice). Both run in this one process,
interleaved (A B A B ...) so that machine noise hits both alike; the medians are compared.

    python benchmarks/throughput.py --data-dir ../shared/medmnist --images 1536 --repeats 2 \
        --csv docs/results/throughput-epyc-avx2.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import medmnist
import torch
import torch.nn as nn
import torch.utils.data as tud
from torchvision import transforms

from _common import SHARED_DATA, add_csv_arguments, append_csv
from medbench.data import load_dataset
from medbench.models import build_model
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.utils.runtime import resolve_runtime


def official_images_per_second(
    data_dir: str, dataset: str, n_images: int, batch_size: int = 128
) -> float:
    """Train the official way for `n_images` images (after one warm-up batch)."""
    cls = getattr(medmnist, medmnist.INFO[dataset]["python_class"])
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    ds = cls(split="train", transform=tf, download=False, root=data_dir)
    loader = tud.DataLoader(ds, batch_size=batch_size, shuffle=True)
    info = medmnist.INFO[dataset]
    model = build_model("resnet18", info["n_channels"], len(info["label"]), image_size=28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, None
    for inputs, targets in loader:
        if start is None and seen >= batch_size:  # one warm-up batch, untimed
            start, seen = time.perf_counter(), 0
        opt.zero_grad()
        outputs = model(inputs)
        loss = crit(outputs, torch.squeeze(targets, 1).long())
        loss.backward()
        opt.step()
        seen += len(inputs)
        if start is not None and seen >= n_images:
            break
    return seen / (time.perf_counter() - start)


def medbench_images_per_second(data, model: str, n_images: int, batch_size: int = 128) -> float:
    """medbench's engine on the first `n_images` training images (whole batches): two
    epochs, the second one timed, as the official pipeline's first batch goes untimed."""
    n = max(1, n_images // batch_size) * batch_size
    train_split = dataclasses.replace(
        data.train, images=data.train.images[:n], labels=data.train.labels[:n]
    )
    small = dataclasses.replace(data, train=train_split)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            dataset=data.info.name,
            model=model,
            epochs=2,
            batch_size=batch_size,
            run_dir=str(Path(tmp) / "run"),
        )
        results = train(cfg, data=small, progress=False).to_json()
    # The engine times its training steps (validation excluded) per round: the second
    # round has no first-step warm-up (oneDNN primitive creation, first allocations).
    return results["history"][-1]["train_images_per_second"]


def cpu_name() -> str:
    """The CPU's model name and the instruction set PyTorch's CPU kernels use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--images", type=int, default=1536, help="images timed per measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--models", default="resnet18,advanced_cnn,efficientnet")
    p.add_argument("--out", help="write the Markdown table here too")
    add_csv_arguments(p, "pipeline and model")
    args = p.parse_args()

    data = load_dataset(args.dataset, 28, args.data_dir, download=False, progress=False)
    models = args.models.split(",")
    official, ours = [], {m: [] for m in models}
    for _ in range(args.repeats):  # interleaved
        official.append(official_images_per_second(args.data_dir, args.dataset, args.images))
        for m in models:
            ours[m].append(medbench_images_per_second(data, m, args.images))
        print(
            f"official {official[-1]:.1f} img/s; "
            + ", ".join(f"{m} {ours[m][-1]:.1f}" for m in models),
            file=sys.stderr,
        )
    base = statistics.median(official)
    precision = resolve_runtime("cpu").precision
    lines = [
        f"Training throughput on {args.dataset} (28px, batch 128), {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved runs of {args.images} images; {cpu_name()}; "
        f"medbench precision {precision}",
        "",
        "| pipeline | model | train images/s | vs official |",
        "|---|---|---:|---:|",
        f"| official MedMNIST (PIL + ToTensor + DataLoader, fp32) | resnet18 | {base:.1f} | 1.00x |",
    ]
    for m in models:
        v = statistics.median(ours[m])
        lines.append(f"| medbench engine | {m} | {v:.1f} | {v / base:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.csv:
        setting = {"dataset": args.dataset, "images": args.images, "repeats": args.repeats,
                   "threads": torch.get_num_threads()}  # fmt: skip
        rows = [{"pipeline": "official", "model": "resnet18", **setting, "precision": "fp32",
                 "images_per_second": f"{base:.1f}", "vs_official": "1.00"}]  # fmt: skip
        for m in models:
            v = statistics.median(ours[m])
            rows.append({"pipeline": "medbench", "model": m, **setting, "precision": precision,
                         "images_per_second": f"{v:.1f}", "vs_official": f"{v / base:.2f}"})  # fmt: skip
        append_csv(args.csv, rows, args.machine, "cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
