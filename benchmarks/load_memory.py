"""Peak memory of loading a large MedMNIST-layout dataset and touching every image once.

Writes a synthetic gray octmnist_224-like npz (default 100,000 images of 224x224, ~5 GB
as uint8; lightly compressed, written member by member so the generator itself stays
small), then, in fresh subprocesses, runs `medbench.data.load_dataset` and reads every
image once in shuffled batches as training does, and prints the process's peak RSS
divided by the uint8 array size. The first run includes unpacking the npz into the
memory-mappable cache; the second loads from the cache.

    python benchmarks/load_memory.py                   # ~5 GB in /tmp, deleted afterwards
    python benchmarks/load_memory.py --n 5000 --size 64   # a quick check
    python benchmarks/load_memory.py --csv docs/results/load-memory-epyc-avx2.csv
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from _common import add_csv_arguments, append_csv

NAME = "octmnist"  # gray, 4 classes: the largest 2D dataset at 224 px


def write_npz(path: Path, n: int, size: int, seed: int = 0) -> None:
    """A valid npz (zip of .npy members, deflate level 1), generated in chunks."""
    rng = np.random.default_rng(seed)
    counts = {"train": n * 8 // 10, "val": n // 10}
    counts["test"] = n - counts["train"] - counts["val"]
    ramp = (np.add.outer(np.arange(size), np.arange(size)) % 64).astype(np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for split, count in counts.items():
            header = {"descr": "|u1", "fortran_order": False, "shape": (count, size, size)}
            with zf.open(f"{split}_images.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for start in range(0, count, 1000):
                    k = min(1000, count - start)
                    base = rng.integers(0, 160, size=(k, 1, 1), dtype=np.uint8)
                    member.write((base + ramp).tobytes())
            with zf.open(f"{split}_labels.npy", "w") as member:
                np.lib.format.write_array(member, rng.integers(0, 4, (count, 1), dtype=np.uint8))
    tmp.replace(path)


def child(data_dir: str, size: int, batch_size: int) -> None:
    """Runs in a fresh process: load, touch every image once, report peak RSS."""
    import torch

    from medbench.data import load_dataset

    rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    data = load_dataset(NAME, size, data_dir, download=False, progress=False)
    load_seconds = time.perf_counter() - t0
    total = 0.0
    n_images = 0
    array_bytes = 0
    for split in (data.train, data.val, data.test):
        order = torch.randperm(len(split))
        for start in range(0, len(split), batch_size):
            batch = split.images[order[start : start + batch_size]].float().div_(255)
            total += float(batch.mean())
            n_images += len(batch)
        array_bytes += split.images.numel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "load_seconds": round(load_seconds, 2),
        "touch_seconds": round(time.perf_counter() - t0 - load_seconds, 2),
        "n_images": n_images, "array_bytes": array_bytes,
        "rss_after_imports_bytes": rss_after_imports, "peak_rss_bytes": peak,
        "peak_over_array": round(peak / array_bytes, 3), "checksum": round(total, 3),
    }))  # fmt: skip


def csv_row(load: str, args: argparse.Namespace, r: dict) -> dict:
    """One results row: a load (`first` or `later`) of the generated dataset."""
    return {
        "load": load,
        "images": args.n,
        "size": args.size,
        "batch_size": args.batch_size,
        "array_gb": f"{r['array_bytes'] / 1e9:.2f}",
        "load_seconds": r["load_seconds"],
        "touch_seconds": r["touch_seconds"],
        "peak_rss_gb": f"{r['peak_rss_bytes'] / 1e9:.2f}",
        "peak_over_array": r["peak_over_array"],
        "rss_after_imports_gb": f"{r['rss_after_imports_bytes'] / 1e9:.2f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of images")
    parser.add_argument("--size", type=int, default=224, choices=(28, 64, 128, 224))
    parser.add_argument("--work-dir", default="/tmp/medbench-load-memory")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_csv_arguments(parser, "load (the first, then a later one)")
    args = parser.parse_args()
    if args.child:
        return child(args.work_dir, args.size, args.batch_size)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    npz = work / (f"{NAME}.npz" if args.size == 28 else f"{NAME}_{args.size}.npz")
    try:
        if not npz.exists():
            t0 = time.perf_counter()
            write_npz(npz, args.n, args.size)
            print(f"wrote {npz} ({npz.stat().st_size / 1e9:.2f} GB) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
        gb = args.n * args.size**2 / 1e9
        print(f"{args.n} x {args.size} x {args.size} gray uint8 = {gb:.2f} GB")
        rows = []
        for run in ("first load (unpacks the npz)", "later load (memory-maps the cache)"):
            out = subprocess.run(
                [sys.executable, "-W", "ignore", __file__, "--child", "--work-dir", str(work),
                 "--size", str(args.size), "--batch-size", str(args.batch_size)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            r = json.loads(out)
            print(f"{run}: load {r['load_seconds']} s, touch every image {r['touch_seconds']} s, "
                  f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB = {r['peak_over_array']}x the "
                  f"array ({r['rss_after_imports_bytes'] / 1e9:.2f} GB after imports)")  # fmt: skip
            assert r["n_images"] == args.n, r
            rows.append(csv_row(run.split()[0], args, r))
        if args.csv:
            append_csv(args.csv, rows, args.machine, "cpu")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
