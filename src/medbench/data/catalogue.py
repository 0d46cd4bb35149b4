"""The MedMNIST 2D catalogue, read from `medmnist.info.INFO` (never retyped here)."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType

from medbench.errors import MedbenchError

SIZES = (28, 64, 128, 224)
DATASETS = (
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)  # fmt: skip
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

    @property
    def is_multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    def url(self, size: int = 28) -> str:
        return self.urls[check_size(size)]

    def md5(self, size: int = 28) -> str:
        return self.md5s[check_size(size)]

    def file_name(self, size: int = 28) -> str:
        """The official file name: `dermamnist.npz` at 28 px, `dermamnist_64.npz` otherwise."""
        size = check_size(size)
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"


def check_size(size: int) -> int:
    """Return `size` if MedMNIST publishes it, else raise MedbenchError."""
    if isinstance(size, bool) or not isinstance(size, int) or size not in SIZES:
        raise MedbenchError(
            f"image size {size!r} is not available; choose one of {', '.join(map(str, SIZES))}"
        )
    return size


def dataset_info(name: str) -> DatasetInfo:
    """The catalogue entry for `name` (case-insensitive); unknown names suggest close ones."""
    key = str(name).strip().lower()
    info = medmnist_info().INFO
    if key not in DATASETS:
        if key in info:
            raise MedbenchError(
                f"{name!r} is a 3D MedMNIST dataset; medbench supports the 2D ones: "
                f"{', '.join(DATASETS)}"
            )
        close = difflib.get_close_matches(key, DATASETS, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "see 'medbench datasets'"
        raise MedbenchError(f"unknown dataset {name!r}; {hint}")
    entry = info[key]
    labels = entry["label"]
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
        urls={s: entry["url" if s == 28 else f"url_{s}"] for s in SIZES},
        md5s={s: entry["MD5" if s == 28 else f"MD5_{s}"] for s in SIZES},
    )


def list_datasets() -> list[DatasetInfo]:
    """All twelve 2D datasets, in the catalogue's order."""
    return [dataset_info(name) for name in DATASETS]
