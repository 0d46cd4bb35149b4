"""`import medbench`: the names a notebook needs, loaded on first use, and the old module
paths, which still import (the same module) with a DeprecationWarning."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import medbench
from medbench.data.synthetic import write_synthetic_like

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
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


def test_the_front_door_offers_every_name_a_notebook_needs():
    assert all(callable(getattr(medbench, name)) for name in NAMES)
    assert set(NAMES) <= set(medbench.__all__) and set(NAMES) <= set(dir(medbench))


def test_each_front_door_name_is_the_function_of_the_module_that_owns_it():
    for name, (module, attribute) in medbench.FRONT_DOOR.items():
        assert getattr(medbench, name) is getattr(importlib.import_module(module), attribute)


def test_no_front_door_name_is_also_a_module_that_an_import_would_bind_over_it():
    clashes = [n for n in NAMES if importlib.util.find_spec(f"medbench.{n}") is not None]
    assert not clashes


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        medbench.trian  # noqa: B018


@pytest.mark.slow
def test_importing_medbench_imports_no_torch():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import medbench"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "medbench" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "numpy", "timm")}


@pytest.mark.parametrize("old", sorted(medbench.MOVED))
def test_an_old_import_path_is_the_moved_module_with_a_deprecation_warning(old):
    new = medbench.MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{re.escape(old)} moved to {re.escape(new)}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the module keeps its own identity


def test_an_old_path_of_a_moved_package_reaches_its_submodules_once():
    sys.modules.pop("medbench.commands.train", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("medbench.commands.train")
    assert old is importlib.import_module("medbench.cli.commands.train")


def test_from_medbench_import_an_old_module_name_still_works(monkeypatch):
    monkeypatch.delitem(sys.modules, "medbench.metrics", raising=False)
    monkeypatch.delattr(medbench, "metrics", raising=False)  # bound by an earlier import
    with pytest.warns(DeprecationWarning, match="medbench.scoring.metrics"):
        from medbench import metrics  # noqa: F401
    assert metrics.official_auc is importlib.import_module("medbench.scoring.metrics").official_auc


def _notebook() -> str:
    """The first Python block of docs/python.md."""
    text = (ROOT / "docs" / "python.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_notebook_in_the_docs_is_about_ten_lines():
    lines = [line for line in _notebook().splitlines() if line.strip()]
    assert len(lines) <= 12 and all(len(line) <= 100 for line in lines)


@pytest.mark.slow
def test_the_notebook_in_the_docs_trains_benchmarks_reports_and_compares(
    tmp_path, monkeypatch, capsys
):
    data = tmp_path / "data"
    write_synthetic_like(data, "breastmnist", 28)
    code = _notebook()
    assert 'data = "my-medmnist"' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"my-medmnist"', repr(str(data)), 1), "docs/python.md", "exec"), {})

    assert (tmp_path / "one" / "results.json").is_file()
    assert (tmp_path / "grid" / "REPORT.md").is_file()
    assert (tmp_path / "grid-report" / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "resnet18" in printed and "efficientnet" in printed  # the comparison's table

    # load_model, predict_images and evaluate on the notebook's run
    model = medbench.load_model(tmp_path / "one")
    assert not model.training
    images = np.load(data / "breastmnist.npz")["test_images"][:5]
    predictions = medbench.predict_images(tmp_path / "one", images)
    assert predictions.probabilities.shape == (5, 2)
    assert predictions.names == [f"images[{i}]" for i in range(5)]
    scores = medbench.evaluate(tmp_path / "one", data)
    assert scores["data_source"] == "argument" and 0 <= scores["test"]["auc"] <= 1


def test_predict_images_refuses_an_array_that_is_not_uint8_images(tmp_path):
    from medbench.serving.predict import _array_input

    with pytest.raises(medbench.MedbenchError, match="uint8 array"):
        _array_input(np.zeros((2, 28, 28), dtype=np.float32), 2)
    with pytest.raises(medbench.MedbenchError, match="uint8 array"):
        _array_input(np.zeros((28, 28), dtype=np.uint8), 2)
