"""Use a trained model: predict classes for image files, folders of them, or npz arrays;
a 3D model's for volumes in `.npy`, `.npz` or NIfTI files (see `medbench.serving.volume_inputs`).

Anything with `meta` (label_names, task, image_size, in_channels, temperature) and
`predict_proba(uint8 NHWC images, calibrated=False) -> probabilities` is a `Predictor`;
`ModelPredictor` wraps one trained model; `medbench.workflows.ensemble.Ensemble` (a folder saved by
`medbench ensemble --out`) is another.

Images are converted to the model's input the way MedMNIST made its own: resized to a
square with PIL's bilinear filter (antialiased when shrinking), colour -> gray by PIL's
ITU-R 601-2 luma, gray -> RGB by repeating the channel. Files are decoded by a thread
pool (PIL releases the GIL) one batch ahead of inference.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import model_spatial_dims
from medbench.scoring import metrics
from medbench.serving.volume_inputs import (
    NIFTI_SUFFIXES,
    as_volume_batch,
    conform_volumes,
    is_volume_file,
    read_array,
)
from medbench.training.inference import load_trained_model, predict_logits
from medbench.utils.fsutil import atomic_write_text
from medbench.utils.runtime import Runtime, place_model, resolve_runtime
from medbench.workflows.ensemble import is_ensemble, load_ensemble

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I")  # PIL's modes of 16-bit gray PNGs
MAX_12_BIT = 4095
DEFAULT_BATCH_SIZE = 256


class Predictor(Protocol):
    """What `predict` needs from a model (or an ensemble of them)."""

    meta: dict[str, Any]

    def predict_proba(self, images: np.ndarray, *, calibrated: bool = False) -> np.ndarray:
        """Class (or label) probabilities (N, C) for uint8 (N, H, W, C) images already at
        the model's size and channels; with `calibrated`, temperature-scaled."""
        ...


class ModelPredictor:
    """One trained medbench model as a `Predictor`."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        runtime: Runtime,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.model = place_model(model, runtime).eval()
        self.meta, self.runtime, self.batch_size = meta, runtime, batch_size

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        return predict_logits(self.model, torch.from_numpy(images), self.runtime, self.batch_size)

    def predict_proba(self, images: np.ndarray, *, calibrated: bool = False) -> np.ndarray:
        temperature = float(self.meta.get("temperature", 1.0)) if calibrated else 1.0
        return metrics.probabilities_from_logits(
            self.predict_logits(images), self.meta["task"], temperature
        )


def load_predictor(
    path: str | os.PathLike,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Predictor:
    """A `ModelPredictor` for a run folder or its model.pt; the `Ensemble` of a folder
    saved by `medbench ensemble --out` (or its ensemble.json)."""
    model_path = Path(path)
    if is_ensemble(model_path):
        return load_ensemble(model_path, device=device, precision=precision)
    model, meta = load_trained_model(model_path)
    return ModelPredictor(model, meta, resolve_runtime(device, precision, True), batch_size)


# ----------------------------------------------------------------------------- inputs


@dataclass
class ArrayInput:
    """Images (or volumes) from one array of an npz or npy file, or one NIfTI volume."""

    path: Path
    key: str | None  # the npz array; None for a .npy or NIfTI file
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, C); volumes (N, D, H, W), any number type

    def names(self) -> list[str]:
        if self.key is not None:
            return [f"{self.path}:{self.key}[{i}]" for i in range(len(self.images))]
        if len(self.images) == 1:
            return [str(self.path)]
        return [f"{self.path}[{i}]" for i in range(len(self.images))]


def resolve_inputs(
    inputs: Sequence[str | os.PathLike], *, split: str | None = None, spatial_dims: int = 2
) -> list[Path | ArrayInput]:
    """Expand the inputs of a model of 2D images (`spatial_dims` 2: image files, folders of
    them searched recursively in sorted order, hidden files skipped, npz and npy arrays) or
    of 3D volumes (3: npy, npz and NIfTI files, and folders of them)."""
    if not inputs:
        what = "volume files (.npy, .npz, .nii)" if spatial_dims == 3 else "image files"
        raise MedbenchError(f"no input given; name {what}, folders of them or an .npz file")
    out: list[Path | ArrayInput] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise MedbenchError(f"{path} does not exist; check the path")
        if spatial_dims == 3:
            files = _folder_files(path, is_volume_file, "volume") if path.is_dir() else [path]
            out.extend(read_volumes(f, split) for f in files)
        elif path.is_dir():
            out.extend(_folder_images(path))
        elif path.suffix.lower() in (".npz", ".npy"):
            out.append(read_npz(path, split))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            out.append(path)
        else:
            raise MedbenchError(
                f"{path} is not a PNG/JPEG image, a folder of them or an .npz/.npy file"
            )
    return out


def read_volumes(path: Path, split: str | None = None) -> ArrayInput:
    """The volumes of one file for a 3D model: an npz's `<split>_images`, `test_images` or
    `images` array, a .npy array, or a NIfTI file's voxels."""
    if not is_volume_file(path):
        raise MedbenchError(
            f"{path} is not a volume file; a 3D model reads .npy, .npz and NIfTI "
            f"({', '.join(NIFTI_SUFFIXES)}) files, or folders of them"
        )
    key = None
    if path.name.lower().endswith(".npz"):
        key = _npz_images_key(path, _npz_keys(path), split)
    where = f"{path}:{key}" if key else str(path)
    return ArrayInput(path, key, as_volume_batch(read_array(path, key), where))


def _npz_keys(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return list(npz.keys())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MedbenchError(
            f"cannot read {path} as an npz file (corrupt or truncated?): {str(exc)[:120]}"
        ) from None


def _folder_files(folder: Path, wanted: Callable[[Path], bool], what: str) -> list[Path]:
    """The files below `folder` that `wanted(path)` accepts, sorted, outside hidden files."""
    files = sorted(
        f
        for f in folder.rglob("*")
        if wanted(f)
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )
    if not files:
        raise MedbenchError(f"folder {folder} holds no {what} files (searched recursively)")
    return files


def _folder_images(folder: Path) -> list[Path]:
    """The PNG/JPEG files below `folder`, sorted, outside hidden files and folders."""
    return _folder_files(folder, lambda f: f.suffix.lower() in IMAGE_SUFFIXES, "PNG or JPEG image")


def read_npz(path: str | os.PathLike, split: str | None = None) -> ArrayInput:
    """The images of an npz: `<split>_images` if `split` is given, else `test_images`
    (MedMNIST layout), else `images`; or of a .npy file, its array."""
    path = Path(path)
    key = _npz_images_key(path, _npz_keys(path), split) if path.suffix.lower() == ".npz" else None
    images = read_array(path, key)
    where = f"{path}:{key}" if key else str(path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise MedbenchError(
            f"{where} must be non-empty uint8 images (N, H, W) or (N, H, W, C), got "
            f"{images.dtype} {images.shape}"
        )
    if images.ndim == 4 and images.shape[3] not in (1, 3):
        raise MedbenchError(f"{where} must have 1 or 3 channels, got {images.shape[3]}")
    return ArrayInput(path, key, images)


def _npz_images_key(path: Path, keys: list[str], split: str | None) -> str:
    key = (
        f"{split}_images"
        if split is not None
        else next((k for k in ("test_images", "images") if k in keys), None)
    )
    if key is None or key not in keys:
        wanted = repr(key) if key else "'test_images' or 'images'"
        raise MedbenchError(
            f"{path} has no {wanted} array (it has: {', '.join(keys) or 'none'}); "
            f"use --split or an npz with an 'images' array"
        )
    return key


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class Conversions:
    """How many images were changed on their way to the model's input."""

    converted: int = 0  # in size, channels or bit depth
    sixteen_bit: int = 0  # of them, 16-bit images scaled to 8 bits
    low_range: int = 0  # of those, images whose values never exceed 12 bits (4095)

    def __add__(self, other: Conversions) -> Conversions:
        return Conversions(
            self.converted + other.converted,
            self.sixteen_bit + other.sixteen_bit,
            self.low_range + other.low_range,
        )


def to_8_bit(image: Image.Image) -> tuple[Image.Image, int | None]:
    """A 16-bit gray image (PIL mode I;16 or I) as 8-bit gray with its full range scaled,
    value * 255 / 65535, so that a 16-bit file saved from an 8-bit image (value * 257) gives
    that image back (PIL's own conversion clips everything above 255 to white). The scale
    is the file's bit depth, never the image's own maximum, so that one image's contrast
    does not depend on its brightest pixel. 16-bit RGB PNGs PIL reads as 8-bit already.
    Returns (image, the largest 16-bit value, or None for an image left as it was)."""
    if image.mode not in HIGH_DEPTH_MODES:
        return image, None
    values = np.asarray(image).astype(np.float64)
    scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled), int(values.max(initial=0))


def conform_image(image: Image.Image, size: int, channels: int) -> tuple[np.ndarray, bool]:
    """(uint8 (size, size, channels) array, whether anything had to be converted)."""
    mode = "L" if channels == 1 else "RGB"
    converted = False
    if image.mode != mode:
        image, converted = image.convert(mode), True
    if image.size != (size, size):
        image, converted = image.resize((size, size), Image.Resampling.BILINEAR), True
    array = np.asarray(image, dtype=np.uint8)
    return (array[:, :, None] if channels == 1 else array), converted


def decode_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, Conversions]:
    """Decode one PNG/JPEG file into the model's input; bad files are a MedbenchError."""
    try:
        with Image.open(path) as image:
            if image.format not in IMAGE_FORMATS:
                raise MedbenchError(f"{path} is a {image.format} image; only PNG and JPEG are read")
            image.load()
            image, max_value = to_8_bit(image)
            array, converted = conform_image(image, size, channels)
    except MedbenchError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise MedbenchError(
            f"cannot read {path} as an image (not a PNG/JPEG, corrupt or truncated?): "
            f"{str(exc)[:120]}"
        ) from None
    if max_value is None:
        return array, Conversions(int(converted))
    return array, Conversions(1, 1, int(max_value <= MAX_12_BIT))


def conform_array(images: np.ndarray, size: int, channels: int) -> tuple[np.ndarray, int]:
    """uint8 (N, H, W[, C]) -> (N, size, size, channels) and how many images were converted."""
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.shape[1:] == (size, size, channels):
        return np.ascontiguousarray(images), 0
    out = np.empty((len(images), size, size, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        out[i] = conform_image(pil, size, channels)[0]
    return out, len(images)


def iter_batches(
    sources: Sequence[Path | ArrayInput],
    size: int,
    channels: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    spatial_dims: int = 2,
) -> Iterator[tuple[list[str], np.ndarray, Conversions]]:
    """Yield (names, uint8 (B, size, size, channels), Conversions) in input order; for
    volumes (`spatial_dims` 3) uint8 (B, size, size, size, 1).

    Files are decoded by `workers` threads, the next batch while the caller uses this one.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    batch_size = max(1, batch_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        files: list[Path] = []
        for source in [*sources, None]:
            if isinstance(source, Path):
                files.append(source)
                continue
            yield from _file_batches(pool, files, size, channels, batch_size)
            files = []
            if isinstance(source, ArrayInput):
                names = source.names()
                for start in range(0, len(names), batch_size):
                    chunk, n = _conform(
                        source.images[start : start + batch_size], size, channels, spatial_dims
                    )
                    yield names[start : start + batch_size], chunk, Conversions(n)


def _conform(
    images: np.ndarray, size: int, channels: int, spatial_dims: int
) -> tuple[np.ndarray, int]:
    if spatial_dims == 3:
        volumes, done = conform_volumes(images, size)
        return volumes, done.converted
    return conform_array(images, size, channels)


def _file_batches(
    pool: ThreadPoolExecutor, files: list[Path], size: int, channels: int, batch_size: int
) -> Iterator[tuple[list[str], np.ndarray, Conversions]]:
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]

    def submit(chunk: list[Path]):
        return [pool.submit(decode_image, f, size, channels) for f in chunk]

    pending = submit(chunks[0]) if chunks else []
    for i, chunk in enumerate(chunks):
        try:
            decoded = [f.result() for f in pending]
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
        batch = np.stack([array for array, _ in decoded])
        yield [str(f) for f in chunk], batch, sum((c for _, c in decoded), Conversions())


# ----------------------------------------------------------------------------- predict


@dataclass
class Predictions:
    """Probabilities for named images, with the model's class names."""

    names: list[str]
    probabilities: np.ndarray  # (N, C), temperature 1
    calibrated: np.ndarray | None  # (N, C) temperature-scaled; None when no temperature was fitted
    label_names: list[str]
    task: str
    temperature: float
    n_converted: int

    def __len__(self) -> int:
        return len(self.names)

    @property
    def best_probabilities(self) -> np.ndarray:
        """The calibrated probabilities when there are any, else the raw ones."""
        return self.calibrated if self.calibrated is not None else self.probabilities

    def predicted(self) -> list[str]:
        """Predicted class name per image; multi-label: the labels above 0.5, joined by '; '."""
        pred = metrics.predictions(self.probabilities, self.task)
        if self.task == metrics.MULTI_LABEL:
            return [
                "; ".join(self.label_names[j] for j in np.flatnonzero(p)) or "(none)" for p in pred
            ]
        return [self.label_names[int(p)] for p in pred]

    def top_probability(self) -> np.ndarray:
        """The probability of the predicted class (multi-label: of the most likely label)."""
        probs = self.best_probabilities
        if self.task == metrics.MULTI_LABEL:
            return probs.max(axis=1)
        pred = metrics.predictions(self.probabilities, self.task)
        return probs[np.arange(len(probs)), pred]

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per image."""
        rows = []
        top = self.top_probability()
        for i, (name, predicted) in enumerate(zip(self.names, self.predicted(), strict=True)):
            row: dict[str, Any] = {
                "file": name,
                "predicted": predicted,
                "probability": float(top[i]),
                "probabilities": dict(
                    zip(self.label_names, map(float, self.probabilities[i]), strict=True)
                ),
            }
            if self.calibrated is not None:
                row["calibrated_probabilities"] = dict(
                    zip(self.label_names, map(float, self.calibrated[i]), strict=True)
                )
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "label_names": self.label_names,
            "temperature": self.temperature,
            "probability": "calibrated" if self.calibrated is not None else "uncalibrated",
            "predictions": self.rows(),
        }

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per image: file, predicted, probability, p_<class>... and, with a
        fitted temperature, p_calibrated_<class>...; atomically."""
        header = ["file", "predicted", "probability"]
        header += [f"p_{n}" for n in self.label_names]
        if self.calibrated is not None:
            header += [f"p_calibrated_{n}" for n in self.label_names]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        top = self.top_probability()
        for i, (name, predicted) in enumerate(zip(self.names, self.predicted(), strict=True)):
            row = [name, predicted, f"{top[i]:.6f}"]
            row += [f"{p:.6f}" for p in self.probabilities[i]]
            if self.calibrated is not None:
                row += [f"{p:.6f}" for p in self.calibrated[i]]
            writer.writerow(row)
        return atomic_write_text(path, buf.getvalue())


def predict(
    model: str | os.PathLike | Predictor,
    inputs: Sequence[str | os.PathLike] | np.ndarray,
    *,
    split: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Predictions:
    """Predict every image of `inputs` (files, folders, npz; or one array of images, uint8
    (N, H, W) or (N, H, W, C), or of volumes (N, D, H, W)) with `model` (a run folder, a
    model.pt, a saved ensemble's folder, or a `Predictor`). Converted images are reported by
    one MedbenchWarning.

        predictions = predict("runs/breastmnist-28/resnet18/seed0-ba359ebe", images)
        predictions.predicted()  # class names, one per image
    """
    if batch_size < 1:
        raise MedbenchError(f"--batch-size must be at least 1, not {batch_size}")
    predictor = (
        load_predictor(model, device=device, precision=precision, batch_size=batch_size)
        if isinstance(model, str | os.PathLike)
        else model
    )
    meta = predictor.meta
    size, channels = int(meta["image_size"]), int(meta["in_channels"])
    temperature = float(meta.get("temperature", 1.0))
    dims = input_spatial_dims(meta)
    sources = (
        [_array_input(inputs, dims)]
        if isinstance(inputs, np.ndarray)
        else resolve_inputs(inputs, split=split, spatial_dims=dims)
    )
    names: list[str] = []
    raw: list[np.ndarray] = []
    calibrated: list[np.ndarray] = []
    conversions = Conversions()
    batches = iter_batches(sources, size, channels, batch_size, workers, spatial_dims=dims)
    for batch_names, batch, done in batches:
        names += batch_names
        conversions += done
        if hasattr(predictor, "predict_logits"):  # one forward pass for both
            logits = predictor.predict_logits(batch)
            raw.append(metrics.probabilities_from_logits(logits, meta["task"]))
            if temperature != 1.0:
                calibrated.append(
                    metrics.probabilities_from_logits(logits, meta["task"], temperature)
                )
        else:
            raw.append(predictor.predict_proba(batch))
            if temperature != 1.0:
                calibrated.append(predictor.predict_proba(batch, calibrated=True))
    _warn_conversions(conversions, len(names), size, channels, dims)
    return Predictions(
        names=names,
        probabilities=np.concatenate(raw),
        calibrated=np.concatenate(calibrated) if calibrated else None,
        label_names=list(meta["label_names"]),
        task=meta["task"],
        temperature=temperature,
        n_converted=conversions.converted,
    )


def _array_input(images: np.ndarray, spatial_dims: int) -> ArrayInput:
    """An array given to `predict` in place of files, named images[0], images[1], ..."""
    if spatial_dims == 2 and (images.dtype != np.uint8 or images.ndim not in (3, 4)):
        raise MedbenchError(
            "images must be a uint8 array (N, H, W) or (N, H, W, C), as MedMNIST stores them; "
            f"got {images.dtype} of shape {images.shape}"
        )
    if spatial_dims == 3 and images.ndim != 4:
        raise MedbenchError(f"volumes must be an array (N, D, H, W); got shape {images.shape}")
    return ArrayInput(Path("images"), None, images)


def input_spatial_dims(meta: dict[str, Any]) -> int:
    """3 when the model (or ensemble) of `meta` takes volumes, else 2."""
    if "spatial_dims" in meta:
        return int(meta["spatial_dims"])
    name = str(meta.get("model", ""))
    return 2 if not name or name.startswith("ensemble:") else model_spatial_dims(name)


def _warn_conversions(
    done: Conversions, n_images: int, size: int, channels: int, spatial_dims: int = 2
) -> None:
    """One MedbenchWarning line for the images converted, one for the 16-bit ones."""
    if done.converted and spatial_dims == 3:
        warnings.warn(
            f"converted {done.converted} of {n_images} volumes to the model's {size}^3 uint8 "
            "input (intensities rescaled to 0-255, trilinear resampling)",
            MedbenchWarning,
            stacklevel=3,
        )
    elif done.converted:
        kind = "grayscale" if channels == 1 else "RGB"
        warnings.warn(
            f"converted {done.converted} of {n_images} images to the model's {size}x{size} "
            f"{kind} input (bilinear resize, channel conversion, bit depth)",
            MedbenchWarning,
            stacklevel=3,
        )
    if done.sixteen_bit:
        dark = (
            f"; {done.low_range} of them never exceed {MAX_12_BIT} (12-bit data in a 16-bit "
            "file?) and so come out dark: scale those to the full 16-bit range first"
            if done.low_range
            else ""
        )
        warnings.warn(
            f"read {done.sixteen_bit} 16-bit images as 8-bit by scaling the 16-bit range "
            f"to 0-255 (value x 255/65535, as an 8-bit export of them would){dark}",
            MedbenchWarning,
            stacklevel=3,
        )
