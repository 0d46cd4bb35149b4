"""Peak memory of loading a MedMNIST-layout dataset and reading every image once.

One subcommand per kind of image: `2d` (a large gray 224-px set) and `3d` (a 64^3 set of
volumes). Each writes a synthetic npz, then, in fresh subprocesses, runs
`medbench.data.load_dataset` and reads every image once in shuffled batches as training
does, and reports the process's peak RSS beside the uint8 array size. The first load
unpacks the npz into medbench's memory-mappable cache; the second maps the cache.

    python benchmarks/load_memory.py 2d                        # ~5 GB in /tmp, deleted afterwards
    python benchmarks/load_memory.py 2d --n 5000 --size 64     # a quick check
    python benchmarks/load_memory.py 3d --csv docs/results/volume-memory-epyc-avx512-torch2.14.csv

`python benchmarks/load_memory.py SUBCOMMAND --help` describes each.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from _common import add_csv_arguments, add_subcommand, append_csv, tool_parser

DATASETS = {"2d": "octmnist", "3d": "organmnist3d"}  # octmnist: gray, the largest 2D set at 224 px
LOADS = ("first load: unpacks the npz into the cache", "later load: maps the cache")

# ----------------------------------------------------------------------------- the child


def peak_rss_bytes(dims: str) -> int:
    """This process's peak resident memory. For `3d`, VmHWM: per address space, so it starts
    afresh at exec (getrusage's ru_maxrss keeps the parent's peak across fork and exec, and
    the 3d parent imports torch to write its file). For `2d`, ru_maxrss, as its published
    rows were measured; its parent only runs numpy and zipfile."""
    if dims == "3d":
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # 2d, or not Linux


def child(dims: str, data_dir: str, size: int, batch_size: int) -> None:
    """Runs in a fresh process: load, touch every image once, print what it measured."""
    import torch

    from medbench.data import load_dataset

    rss_after_imports = peak_rss_bytes(dims)
    t0 = time.perf_counter()
    data = load_dataset(DATASETS[dims], size, data_dir, download=False, progress=False)
    load_seconds = time.perf_counter() - t0
    total, n_images, array_bytes = 0.0, 0, 0
    for split in (data.train, data.val, data.test):
        order = torch.randperm(len(split))
        for start in range(0, len(split), batch_size):
            batch = split.images[order[start : start + batch_size]].float().div_(255)
            total += float(batch.mean())
            n_images += len(batch)
        array_bytes += split.images.numel()
    peak = peak_rss_bytes(dims)
    print(json.dumps({
        "load_seconds": load_seconds,
        "touch_seconds": time.perf_counter() - t0 - load_seconds,
        "n_images": n_images, "array_bytes": array_bytes,
        "rss_after_imports_bytes": rss_after_imports, "peak_rss_bytes": peak,
        "peak_over_array": peak / array_bytes, "checksum": total,
    }))  # fmt: skip


def measure_loads(dims: str, data_dir: Path, size: int, batch_size: int) -> list[tuple[str, dict]]:
    """(which load, what the child measured) for the first load of `data_dir`'s file, which
    unpacks it, then for a later one, which maps the cache."""
    command = [sys.executable, "-W", "ignore", __file__, "--child", dims, str(data_dir),
               str(size), str(batch_size)]  # fmt: skip
    results = []
    for load in LOADS:
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append((load, json.loads(out.strip().splitlines()[-1])))
    return results


# ----------------------------------------------------------------------------- 2d

LOAD_2D = """Peak memory of loading a large gray 2D dataset and reading every image once.

Writes a synthetic gray octmnist_224-like npz (default 100,000 images of 224x224, ~5 GB
as uint8; lightly compressed, written member by member so the generator itself stays
small), then, in fresh subprocesses, runs `medbench.data.load_dataset` and reads every
image once in shuffled batches as training does, and prints the process's peak RSS
divided by the uint8 array size. The first run includes unpacking the npz into the
memory-mappable cache; the second loads from the cache.

    python benchmarks/load_memory.py 2d                        # ~5 GB in /tmp, deleted afterwards
    python benchmarks/load_memory.py 2d --n 5000 --size 64     # a quick check
    python benchmarks/load_memory.py 2d --csv docs/results/load-memory-epyc-avx2.csv
"""


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


def row_2d(load: str, args: argparse.Namespace, r: dict) -> dict:
    """One results row: a load (`first` or `later`) of the generated dataset."""
    return {
        "load": load,
        "images": args.n,
        "size": args.size,
        "batch_size": args.batch_size,
        "array_gb": f"{r['array_bytes'] / 1e9:.2f}",
        "load_seconds": round(r["load_seconds"], 2),
        "touch_seconds": round(r["touch_seconds"], 2),
        "peak_rss_gb": f"{r['peak_rss_bytes'] / 1e9:.2f}",
        "peak_over_array": round(r["peak_over_array"], 3),
        "rss_after_imports_gb": f"{r['rss_after_imports_bytes'] / 1e9:.2f}",
    }


def run_2d(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = DATASETS["2d"]
    npz = work / (f"{name}.npz" if args.size == 28 else f"{name}_{args.size}.npz")
    try:
        if not npz.exists():
            t0 = time.perf_counter()
            write_npz(npz, args.n, args.size)
            print(f"wrote {npz} ({npz.stat().st_size / 1e9:.2f} GB) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
        gb = args.n * args.size**2 / 1e9
        print(f"{args.n} x {args.size} x {args.size} gray uint8 = {gb:.2f} GB")
        rows = []
        for run, r in measure_loads("2d", work, args.size, args.batch_size):
            print(f"{run}: load {r['load_seconds']:.2f} s, touch every image "
                  f"{r['touch_seconds']:.2f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB = "
                  f"{r['peak_over_array']:.3f}x the array "
                  f"({r['rss_after_imports_bytes'] / 1e9:.2f} GB after imports)")  # fmt: skip
            assert r["n_images"] == args.n, r
            rows.append(row_2d(run.split()[0], args, r))
        if args.csv:
            append_csv(args.csv, rows, args.machine, "cpu")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def add_2d(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "2d", LOAD_2D, run_2d)
    p.add_argument("--n", type=int, default=100_000, help="number of images")
    p.add_argument("--size", type=int, default=224, choices=(28, 64, 128, 224))
    p.add_argument("--work-dir", default="/tmp/medbench-load-memory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    add_csv_arguments(p, "load (the first, then a later one)")


# ----------------------------------------------------------------------------- 3d

LOAD_3D = """Peak memory of loading a 64^3 set of volumes and reading every volume once.

Writes a synthetic organmnist3d_64.npz with the official split sizes (971 / 161 / 610
volumes of 64^3, 457 MB as uint8), then in fresh subprocesses loads it with
`medbench.data.load_dataset` and reads every volume once in shuffled batches as training
does, and reports the peak RSS beside the uint8 array size; the first load unpacks the npz
into medbench's memory-mappable cache, the second maps the cache.

    python benchmarks/load_memory.py 3d --csv docs/results/volume-memory-epyc-avx512-torch2.14.csv
"""

OFFICIAL_SPLITS_3D = {"n_train": 971, "n_val": 161, "n_test": 610}  # organmnist3d


def run_3d(args: argparse.Namespace) -> None:
    from medbench.data.synthetic import write_synthetic_like

    folder = Path(tempfile.mkdtemp(prefix="medbench-vol-"))
    try:
        npz = write_synthetic_like(folder, DATASETS["3d"], 64, **OFFICIAL_SPLITS_3D)
        rows = []
        for run, r in measure_loads("3d", folder, 64, args.batch_size):
            rows.append({
                "run": run,
                "volumes": str(sum(OFFICIAL_SPLITS_3D.values())),
                "array_mb": f"{r['array_bytes'] / 1e6:.0f}",
                "npz_mb": f"{npz.stat().st_size / 1e6:.0f}",
                "load_s": f"{r['load_seconds']:.2f}",
                "peak_rss_mb": f"{r['peak_rss_bytes'] / 1e6:.0f}",
                "peak_per_array": f"{r['peak_rss_bytes'] / r['array_bytes']:.2f}x",
            })  # fmt: skip
            print(rows[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.csv:
        append_csv(args.csv, rows, args.machine)


def add_3d(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "3d", LOAD_3D, run_3d)
    p.add_argument("--batch-size", type=int, default=32, help="volumes per batch when reading")
    add_csv_arguments(p, "load (the first, then a later one)")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a measuring subprocess: DIMS DATA_DIR SIZE BATCH_SIZE
        dims, data_dir, size, batch_size = argv[1:5]
        return child(dims, data_dir, int(size), int(batch_size))
    parser, subcommands = tool_parser(__doc__)
    add_2d(subcommands)
    add_3d(subcommands)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
