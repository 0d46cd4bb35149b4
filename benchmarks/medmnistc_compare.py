"""medbench's MedMNIST-C corruptions against the reference package `medmnistc` at 224 px.

Runs in a side virtualenv that has medmnistc 0.1.0 (it pins medmnist 3.0.1 and needs
ImageMagick through Wand) and sees medbench through the system site-packages:

    apt-get install -y libmagickwand-dev
    python3 -m venv --system-site-packages /tmp/mmc && /tmp/mmc/bin/pip install medmnistc
    /tmp/mmc/bin/python benchmarks/medmnistc_compare.py --data-dir /work/shared/medmnist \
        --csv docs/results/robustness-medmnistc-compare-epyc-avx512-torch2.14.csv --machine epyc-avx2

The same images (test images upsampled to 224 px with PIL bicubic, as only 28-px files
are at hand) go through both implementations at each severity; medmnistc works on RGB
copies of grey images (its noise then differs per channel), so its output is compared
through its first channel. Per
corruption and severity the CSV holds the mean absolute difference of the two outputs
(0-255 levels), their pixel correlation, and each one's mean absolute change from the
clean image and change of the image mean and std: random corruptions cannot agree pixel
for pixel, but their statistics should.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys

import numpy as np
import torch
from PIL import Image

from medbench import corruptions as C


def test_images(data_dir: str, dataset: str, n: int) -> np.ndarray:
    """n test images of `dataset` (fixed choice) upsampled to 224 px, uint8 (n, 224, 224)."""
    with np.load(f"{data_dir}/{dataset}.npz") as z:
        imgs = z["test_images"]
    pick = np.random.default_rng(0).choice(len(imgs), n, replace=False)
    return np.stack(
        [np.asarray(Image.fromarray(imgs[i]).resize((224, 224), Image.BICUBIC)) for i in pick]
    )


def reference(imgs: np.ndarray, corruptor, severity: int) -> np.ndarray:
    """medmnistc's output (first channel of its RGB result), float 0-255."""
    out = []
    for img in imgs:
        res = corruptor.apply(Image.fromarray(img).convert("RGB"), severity - 1)
        out.append(np.asarray(res, dtype=np.float64).reshape(224, 224, -1)[..., 0])
    return np.stack(out)


def ours(imgs: np.ndarray, spec: C.CorruptionSpec, severity: int, seed: int) -> np.ndarray:
    x = torch.from_numpy(imgs).float().div(255).unsqueeze(1)
    y = C.corrupt(x, spec, severity, torch.Generator().manual_seed(seed), scale=1.0)
    return y.squeeze(1).double().numpy() * 255


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
    for dataset in args.datasets.split(","):
        imgs = test_images(args.data_dir, dataset, args.images)
        for spec in C.dataset_corruptions(dataset):
            corruptor = CORRUPTIONS_DS[dataset][spec.name]
            corruptor.rng = np.random.default_rng(0)  # what medmnistc's builder sets for s&p
            for s in C.SEVERITIES:
                row = compare(imgs, ours(imgs, spec, s, s), reference(imgs, corruptor, s))
                rows.append({"dataset": dataset, "corruption": spec.name, "severity": s, **row})
                print(dataset, spec.name, s, {k: round(v, 3) for k, v in row.items()}, flush=True)
    stamp = {
        "date": datetime.date.today().isoformat(),
        "machine": args.machine,
        "torch": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
    }
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*stamp, *rows[0]], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(
                {**stamp, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}}
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
