"""medbench: train, compare, tune, ensemble and report deep-learning models on MedMNIST.

The names a notebook needs are here, loaded when first used (so `import medbench` and
`medbench --help` import no PyTorch):

    import medbench
    results = medbench.train(medbench.TrainConfig(dataset="breastmnist", model="resnet18"))
    outcome = medbench.run_benchmark(medbench.BenchmarkConfig("breastmnist", "resnet18,efficientnet"))
    medbench.make_report(outcome.out)
    medbench.compare_runs(outcome.out)

Each is the function of the module that owns it (`FRONT_DOOR` says which); docs/python.md
shows them all. The modules that used to sit directly in this folder moved into folders
that show the layers (docs/architecture.md); their old import paths still work for one
release, with a DeprecationWarning (`MOVED`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from medbench.errors import MedbenchError  # noqa: E402

# name -> (module, attribute). Loaded by name on first use (PEP 562), so importing medbench
# stays cheap and no module here depends on a layer above it at import time.
FRONT_DOOR: dict[str, tuple[str, str]] = {
    "train": ("medbench.training.engine", "train"),
    "evaluate": ("medbench.training.evaluation", "evaluate_run"),
    "run_benchmark": ("medbench.workflows.benchmark", "run_benchmark"),
    "make_report": ("medbench.report", "build_report"),
    "compare_runs": ("medbench.analysis.comparison", "compare_runs"),
    "predict_images": ("medbench.serving.predict", "predict"),
    "load_model": ("medbench.training.inference", "load_model"),
    "TrainConfig": ("medbench.training.config", "TrainConfig"),
    "BenchmarkConfig": ("medbench.workflows.benchmark", "BenchmarkConfig"),
    "RunResults": ("medbench.runs.results", "RunResults"),
}

# Old import path -> new one (a package's old path covers its submodules).
MOVED: dict[str, str] = {
    "medbench.fsutil": "medbench.utils.fsutil",
    "medbench.runtime": "medbench.utils.runtime",
    "medbench.audit": "medbench.data.audit",
    "medbench.augment": "medbench.data.augment",
    "medbench.corruptions": "medbench.data.corruptions",
    "medbench.embeddings": "medbench.models.embeddings",
    "medbench.metrics": "medbench.scoring.metrics",
    "medbench.stats": "medbench.scoring.stats",
    "medbench.results": "medbench.runs.results",
    "medbench.store": "medbench.runs.store",
    "medbench.store_db": "medbench.runs.store_db",
    "medbench.claims": "medbench.runs.leases",
    **{
        f"medbench.{name}": f"medbench.training.{name}"
        for name in [
            "config",
            "engine",
            "recipe",
            "budget",
            "selection",
            "checkpoint",
            "callbacks",
            "progress",
            "evaluation",
            "inference",
            "tracking",
            "modelcard",
            "pretrained",
            "distributed",
        ]
    },
    "medbench.comparison": "medbench.analysis.comparison",
    "medbench.robustness": "medbench.analysis.robustness",
    "medbench.explain": "medbench.analysis.explain",
    "medbench.interchange": "medbench.analysis.official_files",
    "medbench.grid_extras": "medbench.analysis.grid_analyses",
    **{
        f"medbench.{name}": f"medbench.workflows.{name}"
        for name in [
            "benchmark",
            "workers",
            "tune",
            "study_storage",
            "ensemble",
            "transfer",
            "medmnist_plus",
        ]
    },
    "medbench.search": "medbench.workflows.nas",
    "medbench.predict": "medbench.serving.predict",
    "medbench.export": "medbench.serving.export",
    "medbench.volume_inputs": "medbench.serving.volume_inputs",
    "medbench.commands": "medbench.cli.commands",
}

__all__ = [
    "MedbenchError",
    "__version__",
    "train",
    "evaluate",
    "run_benchmark",
    "make_report",
    "compare_runs",
    "predict_images",
    "load_model",
    "TrainConfig",
    "BenchmarkConfig",
    "RunResults",
]

if TYPE_CHECKING:  # what a type checker and an editor see; at run time __getattr__ loads them
    from medbench.analysis.comparison import compare_runs
    from medbench.report import build_report as make_report
    from medbench.runs.results import RunResults
    from medbench.serving.predict import predict as predict_images
    from medbench.training.config import TrainConfig
    from medbench.training.engine import train
    from medbench.training.evaluation import evaluate_run as evaluate
    from medbench.training.inference import load_model
    from medbench.workflows.benchmark import BenchmarkConfig, run_benchmark


def __getattr__(name: str) -> Any:
    if name in FRONT_DOOR:
        module, attribute = FRONT_DOOR[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'medbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(FRONT_DOOR))


def moved_to(fullname: str) -> str | None:
    """The new import path of an old one (`medbench.engine` -> `medbench.training.engine`)."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module at its new path (the same module object, so
    `medbench.engine.train is medbench.training.engine.train`), with a DeprecationWarning.
    It stands first in `sys.meta_path`, so an old package's submodules resolve here too
    instead of being loaded a second time under their old name."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        new = moved_to(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=new)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = str(spec.origin)
        warnings.warn(
            f"{spec.name} moved to {new}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__  # the import system replaces it next
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module ran when it was imported at its new path); give it
        back its own spec."""
        spec = module.__spec__
        # The import system set it to the old path's spec (from find_spec) just before.
        assert spec is not None
        module.__spec__ = self._specs.pop(spec.name, spec)


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
