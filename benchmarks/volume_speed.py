"""3D training speed (3D vs ACS vs 2.5D ResNets) and the memory of loading a 64^3 set.

Speed: training volumes/s (forward + backward + AdamW step on a fixed random batch of
1-channel volumes, 11 classes as OrganMNIST3D) of each model at 28^3 and 64^3. Models are
interleaved within each repeat and the median over repeats is reported, so load from
other processes hits every model alike; the ratio to the first model is the robust figure.

Memory (`--memory`): writes a synthetic organmnist3d_64.npz with the official split sizes
(971 / 161 / 610 volumes of 64^3, 457 MB as uint8), then in fresh subprocesses loads it with
`medbench.data.load_dataset` and reads every volume once in shuffled batches as training
does, and reports the peak RSS beside the uint8 array size; the first load unpacks the npz
into medbench's memory-mappable cache, the second maps the cache.

    python benchmarks/volume_speed.py --csv docs/results/volume-speed-epyc-avx512-torch2.14.csv
    python benchmarks/volume_speed.py --memory --csv docs/results/volume-memory-epyc-avx512-torch2.14.csv
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_csv_arguments, append_csv

MODELS = ("resnet18_3d", "resnet18_acs", "resnet18_2.5d")
BATCH = {28: 8, 64: 2}
OFFICIAL_SPLITS = {"n_train": 971, "n_val": 161, "n_test": 610}  # organmnist3d


def speed(models: list[str], size: int, batch: int, repeats: int, steps: int) -> dict[str, float]:
    """{model: median training volumes/s} at `size`^3."""
    import torch
    from torch import nn

    from medbench.models import build_model

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


def peak_rss_bytes() -> int:
    """This process's peak resident memory, VmHWM: per address space, so it starts afresh
    at exec (getrusage's ru_maxrss keeps the parent's peak across fork and exec, and the
    parent that wrote the synthetic file was large)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux


def child(data_dir: str, batch_size: int) -> None:
    """Runs in a fresh process: load, touch every volume once, report peak RSS."""
    import torch

    from medbench.data import load_dataset

    t0 = time.perf_counter()
    data = load_dataset("organmnist3d", 64, data_dir, download=False, progress=False)
    load_seconds = time.perf_counter() - t0
    array_bytes, total = 0, 0.0
    for split in (data.train, data.val, data.test):
        order = torch.randperm(len(split))
        for start in range(0, len(split), batch_size):
            total += float(split.images[order[start : start + batch_size]].float().mean())
        array_bytes += split.images.numel()
    peak = peak_rss_bytes()
    print(json.dumps({"load_seconds": load_seconds, "array_bytes": array_bytes,
                      "peak_rss_bytes": peak, "checksum": total}))  # fmt: skip


def memory(batch_size: int) -> list[dict[str, str]]:
    from medbench.data.synthetic import write_synthetic_like

    folder = Path(tempfile.mkdtemp(prefix="medbench-vol-"))
    try:
        npz = write_synthetic_like(folder, "organmnist3d", 64, **OFFICIAL_SPLITS)
        rows = []
        for run in ("first load: unpacks the npz into the cache", "later load: maps the cache"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), str(batch_size)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            r = json.loads(out.strip().splitlines()[-1])
            rows.append({
                "run": run,
                "volumes": str(sum(OFFICIAL_SPLITS.values())),
                "array_mb": f"{r['array_bytes'] / 1e6:.0f}",
                "npz_mb": f"{npz.stat().st_size / 1e6:.0f}",
                "load_s": f"{r['load_seconds']:.2f}",
                "peak_rss_mb": f"{r['peak_rss_bytes'] / 1e6:.0f}",
                "peak_per_array": f"{r['peak_rss_bytes'] / r['array_bytes']:.2f}x",
            })  # fmt: skip
            print(rows[-1])
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="measure loading memory instead")
    add_csv_arguments(parser, "model and size (with --memory: load)")
    args = parser.parse_args()
    if args.memory:
        rows = memory(batch_size=32)
        if args.csv:
            append_csv(args.csv, rows, args.machine)
        return
    import torch

    rows = []
    for size in args.sizes:
        result = speed(args.models, size, BATCH[size], args.repeats, args.steps)
        first = result[args.models[0]]
        for m, v in result.items():
            rows.append({
                "model": m, "size": f"{size}^3", "batch": str(BATCH[size]),
                "threads": str(torch.get_num_threads()), "volumes_s": f"{v:.2f}",
                "vs_first": f"{v / first:.2f}x",
            })  # fmt: skip
            print(rows[-1])
    if args.csv:
        append_csv(args.csv, rows, args.machine)


if __name__ == "__main__":
    main()
