"""The MedMNIST catalogue (the 12 2D and 6 3D datasets), read from `medmnist.info.INFO`
(never retyped here)."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType

from medbench.errors import MedbenchError

SIZES = (28, 64, 128, 224)
SIZES_3D = (28, 64)  # the 3D sets are published as 28^3 and 64^3 volumes only
DATASETS = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)
DATASETS_3D = (
    "organmnist3d",
    "nodulemnist3d",
    "adrenalmnist3d",
    "fracturemnist3d",
    "vesselmnist3d",
    "synapsemnist3d",
)
SPLITS = ("train", "val", "test")


def medmnist_info() -> ModuleType:
    """The `medmnist.info` module (INFO, DEFAULT_ROOT).

    `import medmnist.info` first runs medmnist's __init__, which imports torch and
    scikit-learn (seconds); info.py itself needs only the standard library, so when
    medmnist is not imported yet it is loaded on its own.
    """
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"]
    if "_medbench_medmnist_info" not in sys.modules:
        package = importlib.util.find_spec("medmnist")
        if package is None or not package.submodule_search_locations:
            raise MedbenchError("the medmnist package is not installed; run 'pip install medmnist'")
        location = f"{list(package.submodule_search_locations)[0]}/info.py"
        spec = importlib.util.spec_from_file_location("_medbench_medmnist_info", location)
        # a path ending in .py always gets a spec with a source loader
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["_medbench_medmnist_info"] = module
    return sys.modules["_medbench_medmnist_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """One catalogue entry: what the dataset is and where its official files come from."""

    name: str
    python_class: str
    description: str
    task: str  # "multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression"
    label_names: list[str]
    n_classes: int
    n_channels: int
    n_samples: dict[str, int]
    license: str
    urls: dict[int, str] = field(repr=False)
    md5s: dict[int, str] = field(repr=False)
    volumetric: bool = False  # a 3D set: (D, H, W) volumes instead of (H, W[, C]) images

    @property
    def is_multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    @property
    def sizes(self) -> tuple[int, ...]:
        """The sizes MedMNIST publishes this dataset at."""
        return SIZES_3D if self.volumetric else SIZES

    @property
    def spatial_dims(self) -> int:
        return 3 if self.volumetric else 2

    def check_size(self, size: int) -> int:
        """Return `size` if MedMNIST publishes this dataset at it, else raise MedbenchError."""
        return check_size(size, self.sizes, self.name if self.volumetric else None)

    def image_shape(self, size: int = 28) -> tuple[int, ...]:
        """One sample's shape in the official npz: (H, W) gray, (H, W, C) colour, (D, H, W)
        a volume."""
        size = self.check_size(size)
        if self.volumetric:
            return (size, size, size)
        return (size, size) if self.n_channels == 1 else (size, size, self.n_channels)

    def url(self, size: int = 28) -> str:
        return self.urls[self.check_size(size)]

    def md5(self, size: int = 28) -> str:
        return self.md5s[self.check_size(size)]

    def file_name(self, size: int = 28) -> str:
        """The official file name: `dermamnist.npz` at 28 px, `dermamnist_64.npz` otherwise."""
        size = self.check_size(size)
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"


def check_size(size: int, sizes: tuple[int, ...] = SIZES, volumetric: str | None = None) -> int:
    """Return `size` if it is one of `sizes`, else raise MedbenchError (naming the 3D
    dataset `volumetric` when its sizes are the ones refused)."""
    if isinstance(size, bool) or not isinstance(size, int) or size not in sizes:
        what = f"{volumetric} is published at" if volumetric else "choose one of"
        raise MedbenchError(
            f"image size {size!r} is not available; {what} {', '.join(map(str, sizes))}"
        )
    return size


def dataset_info(name: str) -> DatasetInfo:
    """The catalogue entry for `name` (case-insensitive); unknown names suggest close ones."""
    key = str(name).strip().lower()
    known = DATASETS + DATASETS_3D
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "see 'medbench datasets'"
        raise MedbenchError(f"unknown dataset {name!r}; {hint}")
    entry = medmnist_info().INFO[key]
    labels = entry["label"]
    volumetric = key in DATASETS_3D
    sizes = SIZES_3D if volumetric else SIZES
    return DatasetInfo(
        name=key,
        python_class=entry["python_class"],
        description=entry["description"],
        task=entry["task"],
        label_names=[labels[k] for k in sorted(labels, key=int)],
        n_classes=len(labels),
        n_channels=int(entry["n_channels"]),
        n_samples={split: int(entry["n_samples"][split]) for split in SPLITS},
        license=entry["license"],
        urls={s: entry["url" if s == 28 else f"url_{s}"] for s in sizes},
        md5s={s: entry["MD5" if s == 28 else f"MD5_{s}"] for s in sizes},
        volumetric=volumetric,
    )


def list_datasets(volumetric: bool | None = False) -> list[DatasetInfo]:
    """The catalogue's datasets in its order: the twelve 2D ones (the default), the six 3D
    ones (`volumetric=True`) or all eighteen (`volumetric=None`, 2D first)."""
    names = {False: DATASETS, True: DATASETS_3D, None: DATASETS + DATASETS_3D}[volumetric]
    return [dataset_info(name) for name in names]
