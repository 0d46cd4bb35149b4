"""End-to-end speed of `medbench.serving.predict.predict` on a folder of PNGs (decode + convert + infer).

    python benchmarks/predict_speed.py --n 10000 --model efficientnet --channels 3 --workers 1 2 4
    python benchmarks/predict_speed.py --csv docs/results/predict-speed-epyc-avx2.csv

Writes `n` random 28x28 PNGs into a temporary folder (a few percent of them 64x64 RGB, so the
conversion path is exercised too), saves an untrained model in the model.pt format (speed
does not depend on the weights) and times `predict()` over the folder for each worker count.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import add_csv_arguments, append_csv
from medbench.errors import MedbenchWarning
from medbench.models import build_model
from medbench.serving.predict import predict
from medbench.training import checkpoint as ckpt


def write_pngs(folder: Path, n: int, channels: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        if i % 50 == 0:  # 2% need converting
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--model", default="efficientnet")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu")
    add_csv_arguments(parser, "worker count")
    args = parser.parse_args()
    rows = []

    with tempfile.TemporaryDirectory(prefix="medbench-predict-speed-") as tmp:
        folder = Path(tmp) / "images"
        for i in range(-(-args.n // 1000)):
            (folder / f"{i:02d}").mkdir(parents=True)
        t0 = time.perf_counter()
        write_pngs(folder, args.n, args.channels)
        print(f"wrote {args.n} PNGs in {time.perf_counter() - t0:.1f}s")
        model_file = Path(tmp) / "model.pt"
        save_model(model_file, args.model, args.channels)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, device {args.device}"
        )
        for workers in args.workers:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MedbenchWarning)
                t0 = time.perf_counter()
                result = predict(
                    model_file,
                    [folder],
                    batch_size=args.batch_size,
                    workers=workers,
                    device=args.device,
                    precision="fp32",
                )
                seconds = time.perf_counter() - t0
            print(
                f"{args.model}, {workers} decode thread(s), batch {args.batch_size}: "
                f"{len(result)} images in {seconds:.1f}s = {len(result) / seconds:.0f} images/s "
                f"({result.n_converted} converted)"
            )
            rows.append({"model": args.model, "images": len(result), "channels": args.channels,
                         "batch_size": args.batch_size, "workers": workers, "device": args.device,
                         "threads": torch.get_num_threads(), "seconds": f"{seconds:.2f}",
                         "images_per_second": f"{len(result) / seconds:.0f}",
                         "converted": result.n_converted})  # fmt: skip
    if args.csv:
        append_csv(args.csv, rows, args.machine, args.device)


if __name__ == "__main__":
    main()
