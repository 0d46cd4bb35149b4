"""medbench's MedMNIST-C corruptions against the reference package `medmnistc` at 224 px.

Runs in a side virtualenv that has medmnistc 0.1.0 (it pins medmnist 3.0.1 and needs
ImageMagick through Wand) and sees medbench through the system site-packages:

    apt-get install -y libmagickwand-dev
    python3 -m venv --system-site-packages /tmp/mmc && /tmp/mmc/bin/pip install medmnistc
    /tmp/mmc/bin/python benchmarks/medmnistc_compare.py --data-dir /work/shared/medmnist \
        --csv docs/results/robustness-medmnistc-compare-epyc-avx512-torch2.14.csv \
        --machine epyc-avx512

The same images go through both implementations at each severity, upsampled to 224 px
with PIL bicubic from 28 px. A dataset whose file is in --data-dir uses its test images
("real" in the CSV's `images` column); one without a file uses the test images of
medbench.data.synthetic at 28 px, RGB for the colour sets ("synthetic"): smooth class
patterns plus per-pixel noise, not the dataset's content. medmnistc works on RGB copies
of grey images (its noise then differs per channel), so a grey set's output is compared
through its first channel; a colour set is compared over all three channels. Per
corruption and severity the CSV holds the mean absolute difference of the two outputs
(0-255 levels), their pixel correlation, and each one's mean absolute change from the
clean image and change of the image mean and std: random corruptions cannot agree pixel
for pixel, but their statistics should. Rows of datasets not measured in a run are kept
from an existing --csv file.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medbench.data import corruptions as C
from medbench.data.catalogue import dataset_info
from medbench.data.synthetic import make_synthetic_splits


def test_images(data_dir: str, dataset: str, n: int) -> tuple[np.ndarray, str]:
    """n test images of `dataset` (fixed choice) upsampled to 224 px, uint8 (n, 224, 224)
    grey or (n, 224, 224, 3) colour, and where they come from ("real" or "synthetic")."""
    path = Path(data_dir) / f"{dataset}.npz"
    if path.exists():
        with np.load(path) as z:
            imgs, source = z["test_images"], "real"
    else:
        channels = dataset_info(dataset).n_channels
        arrays = make_synthetic_splits(n_channels=channels, n_test=max(n, 16), seed=0)
        imgs, source = arrays["test_images"], "synthetic"
    pick = np.random.default_rng(0).choice(len(imgs), n, replace=False)
    up = [np.asarray(Image.fromarray(imgs[i]).resize((224, 224), Image.BICUBIC)) for i in pick]
    return np.stack(up), source


def reference(imgs: np.ndarray, corruptor, severity: int) -> np.ndarray:
    """medmnistc's output, float 0-255: all channels of a colour image, the first of the
    RGB result of a grey one."""
    out = []
    for img in imgs:
        res = corruptor.apply(Image.fromarray(img).convert("RGB"), severity - 1)
        res = np.asarray(res, dtype=np.float64).reshape(224, 224, -1)
        out.append(res if img.ndim == 3 else res[..., 0])
    return np.stack(out)


def ours(imgs: np.ndarray, spec: C.CorruptionSpec, severity: int, seed: int) -> np.ndarray:
    x = torch.from_numpy(imgs).float().div(255)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
    y = C.corrupt(x, spec, severity, torch.Generator().manual_seed(seed), scale=1.0)
    y = y.permute(0, 2, 3, 1) if imgs.ndim == 4 else y.squeeze(1)
    return y.double().numpy() * 255


def compare(clean: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    clean = clean.astype(np.float64)
    return {
        "mean_abs_diff": float(np.abs(a - b).mean()),
        "correlation": float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
        "medbench_change": float(np.abs(a - clean).mean()),
        "medmnistc_change": float(np.abs(b - clean).mean()),
        "medbench_mean_shift": float(a.mean() - clean.mean()),
        "medmnistc_mean_shift": float(b.mean() - clean.mean()),
        "medbench_std_ratio": float(a.std() / clean.std()),
        "medmnistc_std_ratio": float(b.std() / clean.std()),
    }


def kept_rows(path: str, measured: list[str]) -> list[dict[str, str]]:
    """The rows of an existing CSV for datasets this run does not measure; rows written
    before the `images` column existed came from the real files."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        old = [r for r in csv.DictReader(f) if r["dataset"] not in measured]
    return [{**r, "images": r.get("images") or "real"} for r in old]


def write_rows(path: str, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--datasets", default="breastmnist,pneumoniamnist")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--csv", required=True)
    p.add_argument("--machine", default=platform.machine(), help="machine label for the CSV")
    args = p.parse_args()  # before importing medmnistc: --help works without it
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    # medmnistc 0.1.0's motion blur calls np.fromstring, which numpy 2 removed.
    np.fromstring = lambda data, dtype: np.frombuffer(data, dtype)  # noqa: E731
    np.random.seed(0)
    rows = []
    datasets = args.datasets.split(",")
    for dataset in datasets:
        imgs, source = test_images(args.data_dir, dataset, args.images)
        for spec in C.dataset_corruptions(dataset):
            corruptor = CORRUPTIONS_DS[dataset][spec.name]
            corruptor.rng = np.random.default_rng(0)  # what medmnistc's builder sets for s&p
            for s in C.SEVERITIES:
                row = compare(imgs, ours(imgs, spec, s, s), reference(imgs, corruptor, s))
                rows.append(
                    {"dataset": dataset, "images": source, "corruption": spec.name,
                     "severity": s, **row}
                )  # fmt: skip
                print(dataset, spec.name, s, {k: round(v, 3) for k, v in row.items()}, flush=True)
    stamp = {
        "date": datetime.date.today().isoformat(),
        "machine": args.machine,
        "torch": torch.__version__,
        "command": " ".join([sys.executable, *sys.argv]),
    }
    new = [
        {**stamp, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}}
        for r in rows
    ]
    write_rows(args.csv, kept_rows(args.csv, datasets) + new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
