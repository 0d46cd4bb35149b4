"""Export a trained model to ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes what the PyTorch model takes: float32 (batch, C, H, W) images
(volumes of a 3D model: (batch, C, D, H, W))
normalised as in training, (uint8 / 255 - 0.5) / 0.5, with a dynamic batch size; it
returns logits (softmax / sigmoid and the calibration temperature are left to the user,
see docs/predict.md).

The file is exported in memory, run on a real batch (the dataset's test
images when the data file is at hand, else random uint8 images normalised the same way)
at that batch size and at batch sizes 1 and 7, and written (atomically, after a check of
the free disk space) only when its outputs are within `tolerance` of PyTorch's.

ONNX uses PyTorch's TorchScript-based exporter (`dynamo=False`, `dynamic_axes`): the
dynamo exporter needs the onnxscript package, which medbench does not depend on.
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medbench.data import load_dataset
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import model_spatial_dims
from medbench.runs.results import recorded_data_dir
from medbench.training.inference import load_trained_model, normalize
from medbench.utils.fsutil import atomic_write_bytes

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4
CHECK_IMAGES = 32
ONNX_OPSET = 17
EXTRA_BATCH_SIZES = (1, 7)
# The packages a format needs beyond medbench's own: the `export` extra.
OPTIONAL_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "torchscript": ()}
INSTALL_EXTRA = 'pip install "medbench[export]"'


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # over every checked output, against PyTorch
    check_source: str  # where the check images came from
    batch_sizes: tuple[int, ...]  # the batch sizes that were run


def default_output(model_path: str | os.PathLike, fmt: str) -> Path:
    """`model.onnx` / `model.torchscript.pt` beside the model.pt (inside a run folder)."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    stem = "model" if path.is_dir() else path.stem
    return folder / f"{stem}{SUFFIXES[fmt]}"


def check_images(
    meta: dict, data_dir: str | os.PathLike | None = None, n: int = CHECK_IMAGES
) -> tuple[np.ndarray, str]:
    """(uint8 NHWC images or NDHWC volumes, description): the dataset's first `n` test
    images when its file is present (never downloaded), else `n` random uint8 images of the
    model's shape."""
    shape = input_shape(meta)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MedbenchWarning)  # an unofficial file is fine here
            data = load_dataset(
                meta["dataset"], meta["image_size"], data_dir, download=False, progress=False
            )
        images = data.test.images[:n].numpy()
        if images.shape[1:] == shape:
            return np.ascontiguousarray(images), f"{len(images)} test images of {data.path}"
    except MedbenchError:
        pass
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return images, f"{n} random uint8 images (the {meta['dataset']} data file was not found)"


def input_shape(meta: dict) -> tuple[int, ...]:
    """One uint8 sample's shape: (H, W, C) for a 2D model, (D, H, W, C) for a 3D one."""
    return (meta["image_size"],) * model_spatial_dims(meta["model"]) + (meta["in_channels"],)


def normalized_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> the float32 (N, C, H, W) input of the model and its export;
    volumes (N, D, H, W, C) -> (N, C, D, H, W)."""
    x = torch.from_numpy(images).movedim(-1, 1).float().div_(255.0)
    return normalize(x.contiguous())


def export_model(
    model_path: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
    import_module: Callable[[str], object] = importlib.import_module,
) -> ExportResult:
    """Export a run folder's (or model.pt's) model to `fmt` at `out`; see the module doc.
    `import_module` is how the format's optional packages are looked for."""
    if fmt not in FORMATS:
        raise MedbenchError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    require_packages(fmt, import_module)
    model_file = Path(model_path)  # (a run folder or its model.pt)
    model, meta = load_trained_model(model_file)
    model = model.float().eval()
    out = Path(out) if out is not None else default_output(model_file, fmt)
    if out.is_dir():
        raise MedbenchError(f"{out} is a folder; give --out a file name")
    _make_folder(out.parent)  # a folder that cannot be made is refused before any work
    images, source = check_images(meta, data_dir or recorded_data_dir(model_file))
    batches = [normalized_input(images)] + [
        normalized_input(images[np.arange(b) % len(images)]) for b in EXTRA_BATCH_SIZES
    ]
    data, diff = _export_and_compare(model, fmt, batches)
    if not diff <= tolerance:
        raise MedbenchError(
            f"the {fmt} export differs from PyTorch by up to {diff:.3g} (tolerance "
            f"{tolerance:g}) on {source}; it was not written"
        )
    atomic_write_bytes(out, data)
    return ExportResult(
        path=out,
        format=fmt,
        max_abs_diff=diff,
        check_source=source,
        batch_sizes=tuple(len(x) for x in batches),
    )


def require_packages(
    fmt: str, import_module: Callable[[str], object] = importlib.import_module
) -> None:
    """Refuse, before any work, a format whose optional packages are not installed."""
    for name in OPTIONAL_PACKAGES[fmt]:
        try:
            import_module(name)
        except ImportError:
            raise MedbenchError(
                f"--format {fmt} needs the {name} package, which is not installed; "
                f"install it with: {INSTALL_EXTRA}"
            ) from None


def _export_and_compare(
    model: torch.nn.Module, fmt: str, batches: list[torch.Tensor]
) -> tuple[bytes, float]:
    """Export `model` in memory, run the exported bytes on `batches`; (the bytes, the
    largest difference from PyTorch's outputs, inf where a shape differs).

    Nothing touches the disk here: the exporters' C++ writers abort the process on a full
    disk, so the checked bytes are written afterwards, by one atomic write of known size."""
    with torch.no_grad():
        expected = [model(x).numpy() for x in batches]
    example = batches[0][:2]  # traced at batch 2 so that no size is specialised to 1
    if fmt == "onnx":
        data = _export_onnx(model, example)
        run = _onnx_runner(data)
    else:
        data = _export_torchscript(model, example)
        run = _torchscript_runner(data)
    try:
        outputs = [run(x) for x in batches]
    except Exception as exc:  # the exported file itself failed: never keep it
        raise MedbenchError(
            f"the exported {fmt} model failed to run ({type(exc).__name__}: "
            f"{str(exc)[:160]}); it was not written"
        ) from None
    return data, max(
        float(np.abs(o - e).max()) if o.shape == e.shape else float("inf")
        for o, e in zip(outputs, expected, strict=True)
    )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedbenchError(
            f"cannot write to {folder}: {exc.strerror or exc}; choose a writable folder"
        ) from exc


def _export_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(
            model,
            (example,),
            # The annotation says a path; the TorchScript exporter (dynamo=False) also
            # writes to a binary file object, as its documentation says.
            buf,  # type: ignore[arg-type]
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    return buf.getvalue()


def _onnx_runner(data: bytes):
    import onnxruntime as ort  # optional: the `export` extra

    ort_session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: ort_session.run(None, {"images": x.numpy()})[0]


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings and torch.jit's deprecation notice
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def _torchscript_runner(data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()

    return run
