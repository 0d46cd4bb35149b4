"""`medbench export`: ONNX and TorchScript files that match PyTorch, or nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.serving.export import TOLERANCE, export_model, normalized_input
from medbench.training import checkpoint as ckpt
from medbench.training.inference import load_trained_model


def save_model(path: Path, name: str, in_channels: int = 3, num_classes: int = 8) -> Path:
    """An untrained model `name` in medbench's model.pt format (bloodmnist's shape)."""
    from medbench.models import build_model

    torch.manual_seed(0)
    model = build_model(name, in_channels, num_classes, image_size=28)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": ckpt.MODEL_FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "model": name,
            "model_options": {},
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": 28,
            "task": "multi-class",
            "label_names": [f"class {i}" for i in range(num_classes)],
            "dataset": "bloodmnist",
            "normalization": {"mean": 0.5, "std": 0.5},
            "temperature": 1.0,
            "seed": 0,
            "state_dict": model.state_dict(),
        },
        path,
    )
    return path


def random_batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def pytorch_logits(model_file: Path, images: np.ndarray) -> np.ndarray:
    model, _ = load_trained_model(model_file)
    with torch.no_grad():
        return model(normalized_input(images)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["advanced_cnn", "efficientnet", "resnet18"])
def test_onnx_export_matches_pytorch_at_batch_1_and_7(tmp_path, name):
    model_file = save_model(tmp_path / "model.pt", name)
    result = export_model(model_file, "onnx")
    assert result.path == tmp_path / "model.onnx" and result.max_abs_diff <= TOLERANCE
    ort_session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        images = random_batch(n)
        (out,) = ort_session.run(None, {"images": normalized_input(images).numpy()})
        np.testing.assert_allclose(out, pytorch_logits(model_file, images), atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["advanced_cnn", "efficientnet", "resnet18"])
def test_torchscript_export_matches_pytorch_at_batch_1_and_7(tmp_path, name):
    model_file = save_model(tmp_path / "model.pt", name)
    result = export_model(model_file, "torchscript")
    assert result.path == tmp_path / "model.torchscript.pt"
    module = torch.jit.load(str(result.path))
    for n in (1, 7):
        images = random_batch(n)
        with torch.no_grad():
            out = module(normalized_input(images)).numpy()
        np.testing.assert_allclose(out, pytorch_logits(model_file, images), atol=TOLERANCE)


@pytest.mark.slow
def test_check_uses_the_datasets_test_images_when_the_file_is_there(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "data", "bloodmnist", n_test=10)
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    result = export_model(model_file, "onnx", data_dir=tmp_path / "data")
    assert result.check_source.startswith("10 test images of")
    assert result.batch_sizes == (10, 1, 7)


@pytest.mark.slow
def test_check_finds_the_data_folder_the_run_was_trained_from(tmp_path):
    from medbench.data.synthetic import write_synthetic_like
    from medbench.runs.results import ModelInfo, RunResults, Timing

    write_synthetic_like(tmp_path / "data", "bloodmnist", n_test=10)
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    results = RunResults(
        run_dir=str(tmp_path / "run"), config={"data_dir": str(tmp_path / "data")}, dataset={},
        model=ModelInfo("efficientnet", 1, 0), metrics={}, timing=Timing(0.0), steps=1,
        steps_per_epoch=1, rounds_planned=1, rounds_completed=1, best_round=1,
    )  # fmt: skip
    (tmp_path / "run" / "results.json").write_text(json.dumps(results.to_json()))
    result = export_model(model_file, "torchscript")
    assert result.check_source.startswith("10 test images of")


@pytest.mark.slow
def test_check_falls_back_to_random_images_without_the_data_file(tmp_path):
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    result = export_model(model_file, "onnx", data_dir=tmp_path / "no-data")
    assert "random uint8 images" in result.check_source


@pytest.mark.slow
def test_failed_check_leaves_no_file_behind(tmp_path):
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(MedbenchError, match="was not written"):
        export_model(model_file, "onnx", out, tolerance=-1.0)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_cli_reports_the_file_and_the_max_difference(tmp_path, capsys):
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    out = tmp_path / "exported.onnx"
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max |difference| from PyTorch" in printed
    assert out.is_file()


@pytest.mark.slow
def test_cli_refuses_a_file_that_is_not_a_medbench_model(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    assert main(["export", str(tmp_path / "weights.pt"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written by medbench" in err


def _without(missing: str):
    """An importer for which the package `missing` is not installed."""
    import importlib

    def import_module(name: str):
        if name == missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return importlib.import_module(name)

    return import_module


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_onnx_without_its_packages_names_the_extra_to_install_and_writes_nothing(tmp_path, missing):
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    with pytest.raises(MedbenchError) as error:
        export_model(model_file, "onnx", import_module=_without(missing))
    message = str(error.value)
    assert f"needs the {missing} package" in message
    assert 'pip install "medbench[export]"' in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.pt"]


@pytest.mark.slow
def test_torchscript_needs_no_optional_package(tmp_path):
    model_file = save_model(tmp_path / "run" / "model.pt", "efficientnet")
    result = export_model(model_file, "torchscript", import_module=_without("onnx"))
    assert result.path.is_file()
