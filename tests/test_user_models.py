"""A user's own model (`file.py:fn`, `module:fn`, a `medbench.models` plugin) goes wherever
a model name goes; its source hash keeps two versions of it apart."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medbench.cli import main
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError
from medbench.models import (
    PlainModel,
    build_model,
    list_models,
    model_label,
    model_options,
    model_source,
    model_spatial_dims,
)
from medbench.report.collect import load_runs
from medbench.serving.export import normalized_input
from medbench.training.config import NOT_IDENTITY, TrainConfig, config_hash
from medbench.training.inference import load_trained_model
from medbench.workflows.grid_plan import plan_grid
from support.grids import run_benchmark_with

NET = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, width):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.fc = nn.Linear(width, num_classes)
        self.num_features = width

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, features, pre_logits=False):
        pooled = features.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def build(in_channels, num_classes, image_size=28, *, width=8):
    return TinyNet(in_channels, num_classes, width)


def plain(in_channels, num_classes, image_size=28):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


def volumes(in_channels, num_classes, image_size=28):
    return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))


volumes.spatial_dims = 3


def raises(in_channels, num_classes, image_size=28):
    raise ValueError("width must be\\neven")


def not_a_module(in_channels, num_classes, image_size=28):
    return "a string"


def wrong_shape(in_channels, num_classes, image_size=28):
    return nn.Conv2d(in_channels, num_classes, 3)
"""


@pytest.fixture
def net_file(tmp_path) -> Path:
    path = tmp_path / "my_net.py"
    path.write_text(NET)
    return path


@pytest.fixture
def breast_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    write_synthetic_like(folder, "breastmnist", 28)
    return folder


# -- building -------------------------------------------------------------------------------


def test_a_file_model_builds_with_its_options_and_defaults(net_file):
    name = f"{net_file}:build"
    assert model_options(name) == {"width": 8}
    model = build_model(name, 1, 2, 28, width=4)
    assert model.fc.in_features == 4
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 2)


def test_a_relative_path_is_recorded_absolute_with_the_files_hash(net_file, monkeypatch):
    monkeypatch.chdir(net_file.parent)
    name, digest = model_source("my_net.py:build")
    assert name == f"{net_file}:build"
    assert len(digest) == 12
    assert model_source("advanced_cnn") == ("advanced_cnn", None)
    assert model_source("timm:resnet10t") == ("timm:resnet10t", None)


def test_the_label_is_the_function_qualified_by_the_file_stem(net_file):
    assert model_label(f"{net_file}:build") == "my_net:build"
    assert model_label("pkg.nets:build") == "pkg.nets:build"
    assert model_label("resnet18") == "resnet18"


def test_a_network_without_forward_features_gets_the_fallback(net_file):
    torch.manual_seed(0)
    model = build_model(f"{net_file}:plain", 1, 3, 28)
    assert isinstance(model, PlainModel)
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    assert torch.equal(model.forward_head(features), model.net(x))
    assert model.num_features == 3


def test_spatial_dims_come_from_the_builders_attribute(net_file):
    assert model_spatial_dims(f"{net_file}:build") == 2
    assert model_spatial_dims(f"{net_file}:volumes") == 3
    assert build_model(f"{net_file}:volumes", 1, 2, 28)(torch.zeros(1, 1, 28, 28, 28)).shape == (
        1,
        2,
    )


def test_the_probe_draws_no_random_numbers(net_file):
    from medbench.models.user import resolve

    torch.manual_seed(3)
    resolve(f"{net_file}:build").builder(1, 2, 28)  # the builder alone
    expected = torch.rand(1)
    torch.manual_seed(3)
    build_model(f"{net_file}:build", 1, 2, 28)  # the builder, the checks and the probe
    assert torch.equal(torch.rand(1), expected)


def test_a_module_spec_builds_from_the_python_path(net_file, monkeypatch):
    monkeypatch.syspath_prepend(str(net_file.parent))
    assert build_model("my_net:build", 1, 2, 28)(torch.zeros(1, 1, 28, 28)).shape == (1, 2)
    assert model_source("my_net:build")[1] == model_source(f"{net_file}:build")[1]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("missing.py:build", "model file {dir}/missing.py does not exist"),
        ("my_net.py:nothing", "{dir}/my_net.py has no function 'nothing'; it defines: build,"),
        ("my_net.py:raises", "the builder of model my_net:raises raised ValueError: width must be even"),
        ("my_net.py:not_a_module", "returned a str, not a torch.nn.Module"),
        ("my_net.py:wrong_shape", "returns (2, 2, 26, 26) for a probe batch of shape (2, 1, 28, 28)"),
        ("no_such_package.nets:build", "no module 'no_such_package'"),
    ],
)  # fmt: skip
def test_each_failure_is_one_line(net_file, monkeypatch, spec, expected):
    monkeypatch.chdir(net_file.parent)
    with pytest.raises(MedbenchError) as info:
        build_model(spec, 1, 2, 28)
    message = str(info.value)
    assert expected.format(dir=net_file.parent) in message
    assert "\n" not in message


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef build(:\n    pass\n")
    with pytest.raises(MedbenchError, match=rf"model file {bad}, line 3: syntax error"):
        build_model(f"{bad}:build", 1, 2, 28)


def test_an_unknown_option_is_refused_with_the_builders_options(net_file):
    with pytest.raises(MedbenchError, match="has no option depth; its options are: width"):
        build_model(f"{net_file}:build", 1, 2, 28, depth=3)


def test_the_cli_prints_the_error_as_one_line_and_exits_2(net_file, breast_dir, capsys):
    argv = ["train", "--dataset", "breastmnist", "--model", f"{net_file}:nothing"]
    assert main([*argv, "--data-dir", str(breast_dir), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no function 'nothing'" in err


# -- identity -------------------------------------------------------------------------------


def _config(model: str, **kw) -> TrainConfig:
    return TrainConfig(dataset="breastmnist", model=model, epochs=1, **kw).validate()


def test_the_source_hash_is_part_of_the_runs_identity(net_file):
    before = _config(f"{net_file}:build")
    net_file.write_text(NET + "\n# wider later\n")
    after = _config(f"{net_file}:build")
    assert before.model_source_hash != after.model_source_hash
    assert config_hash(before) != config_hash(after)


def test_a_stock_model_records_no_source_hash_and_its_identity_leaves_it_out():
    config = _config("advanced_cnn")
    assert config.model_source_hash is None
    # The identity hashes exactly what it hashed before the field existed, so the run
    # folders and grid cells of medbench's own models keep their names.
    before = {
        k: v
        for k, v in config.to_dict().items()
        if k not in NOT_IDENTITY and k != "model_source_hash"
    }
    blob = json.dumps(before, sort_keys=True, default=str).encode()
    assert config_hash(config) == hashlib.sha256(blob).hexdigest()[:12]
    recorded = TrainConfig.from_dict({**config.to_dict(), "model_source_hash": "0" * 12})
    assert config_hash(recorded) != config_hash(config)


def test_a_config_planned_before_an_edit_is_refused_when_it_trains(net_file):
    config = _config(f"{net_file}:build")
    net_file.write_text(NET + "\n# edited\n")
    with pytest.raises(MedbenchError, match="my_net:build changed since this run was made"):
        TrainConfig.from_dict(config.to_dict()).validate()


def test_a_grid_names_the_folder_by_label_and_keeps_two_versions_apart(net_file, tmp_path):
    spec = f"{net_file}:build"
    first = plan_grid(["breastmnist"], [spec, "advanced_cnn"], [0], out=tmp_path / "g")
    assert Path(first[0].config.run_dir).parent.name == "my_net:build"
    assert first[0].config.model == spec
    net_file.write_text(NET + "\n# edited\n")
    second = plan_grid(["breastmnist"], [spec, "advanced_cnn"], [0], out=tmp_path / "g")
    assert first[0].key != second[0].key
    assert first[0].config.run_dir != second[0].config.run_dir
    assert first[1].key == second[1].key  # the stock model's cell is the same


# -- end to end -----------------------------------------------------------------------------


def _export_matches_pytorch(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = normalized_input(images[..., None])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    model, _ = load_trained_model(run_dir)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits, model(x).numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_file_model_trains_joins_a_grid_exports_and_predicts(net_file, breast_dir, tmp_path):
    spec = f"{net_file}:build"
    run_dir = tmp_path / "run"
    train = ["train", "--dataset", "breastmnist", "--model", spec, "--epochs", "1"]
    assert main([*train, "--data-dir", str(breast_dir), "--run-dir", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["model"] == spec
    assert results["model"]["name"] == "my_net:build"  # what tables and the card show
    assert "# Model card: my_net:build on breastmnist" in (run_dir / "MODEL_CARD.md").read_text()
    assert results["config"]["model_source_hash"] == model_source(spec)[1]
    assert torch.load(run_dir / "model.pt")["model_source_hash"] == model_source(spec)[1]

    outcome = run_benchmark_with(
        "breastmnist", [spec, "advanced_cnn"], [0], epochs=1, out=tmp_path / "grid",
        data_dir=breast_dir, device="cpu", report=False, progress=False,
    )  # fmt: skip
    assert outcome.ok and len(outcome.cells) == 2
    assert (tmp_path / "grid" / "runs" / "breastmnist-28" / "my_net:build").is_dir()
    assert sorted(run["model"] for run in load_runs(tmp_path / "grid")) == [
        "advanced_cnn",
        "my_net:build",
    ]  # what the report's tables name

    _export_matches_pytorch(run_dir, tmp_path)
    csv = tmp_path / "pred.csv"
    npz = breast_dir / "breastmnist.npz"
    assert main(["predict", str(run_dir), str(npz), "--csv", str(csv), "--device", "cpu"]) == 0
    assert len(csv.read_text().strip().splitlines()) == 1 + 16  # header, the test images


@pytest.mark.slow
def test_weights_of_an_edited_or_moved_file_are_refused(net_file, breast_dir, tmp_path, capsys):
    spec = f"{net_file}:build"
    run_dir = tmp_path / "run"
    train = ["train", "--dataset", "breastmnist", "--model", spec, "--epochs", "1"]
    assert main([*train, "--data-dir", str(breast_dir), "--run-dir", str(run_dir)]) == 0
    load_trained_model(run_dir)
    net_file.write_text(NET.replace("width=8", "width=16"))
    with pytest.raises(MedbenchError, match="changed since this run was made"):
        load_trained_model(run_dir)
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(breast_dir / "breastmnist.npz")]) == 2
    assert "my_net:build changed since" in capsys.readouterr().err
    net_file.rename(tmp_path / "elsewhere.py")
    with pytest.raises(MedbenchError, match=f"model file {net_file} does not exist") as info:
        load_trained_model(run_dir)
    assert "the run's model my_net:build is rebuilt from its source" in str(info.value)


@pytest.mark.slow
def test_resuming_after_an_edit_is_refused(net_file, breast_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--dataset", "breastmnist", "--model", f"{net_file}:build", "--epochs", "1"]
    argv += ["--data-dir", str(breast_dir), "--run-dir", str(run_dir), "--device", "cpu"]
    assert main([*argv, "--keep-checkpoint"]) == 0
    net_file.write_text(NET + "\n# edited\n")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt belongs to another run" in err and "model_source_hash" in err


@pytest.mark.slow
def test_a_grid_whose_file_is_edited_mid_grid_stops_and_reruns_as_another_model(
    net_file, breast_dir, tmp_path
):
    from medbench.training.engine import train

    spec, out = f"{net_file}:build", tmp_path / "grid"

    def train_then_edit(config, **kwargs):
        results = train(config, **kwargs)
        net_file.write_text(NET + "\n# edited mid-grid\n")  # under the running grid
        return results

    grid = dict(epochs=1, out=out, data_dir=breast_dir, device="cpu", report=False, progress=False)
    with pytest.raises(MedbenchError, match="my_net:build changed since this run was made"):
        run_benchmark_with("breastmnist", [spec], [0, 1], train_fn=train_then_edit, **grid)
    folder = out / "runs" / "breastmnist-28" / "my_net:build"
    assert len(list(folder.glob("*/results.json"))) == 1  # seed 1 never trained the new file

    outcome = run_benchmark_with("breastmnist", [spec], [0, 1], **grid)
    assert outcome.ok
    hashes = {
        json.loads(p.read_text())["config"]["model_source_hash"]
        for p in folder.glob("*/results.json")
    }
    assert len(list(folder.glob("*/results.json"))) == 3 and len(hashes) == 2


# -- an installed plugin --------------------------------------------------------------------


def _plugin_path(tmp_path: Path) -> Path:
    """An importable package and its dist-info (what pip would install) in one folder."""
    site = tmp_path / "site"
    (site / "tinyplug").mkdir(parents=True)
    (site / "tinyplug" / "__init__.py").write_text("")
    (site / "tinyplug" / "nets.py").write_text(NET)
    info = site / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medbench.models]\ntinyplug = tinyplug.nets:build\n")
    return site


def _medbench(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    command = list(args) if args[0] == "-c" else ["-m", "medbench", *args]
    return subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_an_installed_plugin_is_listed_by_medbench_models(tmp_path):
    listed = _medbench(_plugin_path(tmp_path), "models", "--dataset", "breastmnist")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:1] == ["tinyplug"] for line in listed.stdout.splitlines())


# Several medbench commands in one interpreter (each one's exit code on the last line):
# one start-up instead of one per command.
COMMANDS = """
import json, sys
from medbench.cli import main
print(json.dumps([main(argv) for argv in json.loads(sys.argv[1])]))
"""


@pytest.mark.slow
def test_an_installed_plugin_trains_joins_a_grid_exports_and_predicts(breast_dir, tmp_path):
    site, run_dir, grid = _plugin_path(tmp_path), tmp_path / "run", tmp_path / "grid"
    common = ["--data-dir", str(breast_dir), "--epochs", "1", "--device", "cpu"]
    commands = [
        ["train", "--dataset", "breastmnist", "--model", "tinyplug", "--run-dir", str(run_dir),
         *common],
        ["benchmark", "--datasets", "breastmnist", "--models", "tinyplug,advanced_cnn",
         "--seeds", "1", "--out", str(grid), "--no-report", "--quiet", *common],
        ["export", str(run_dir), "--format", "onnx"],
        ["predict", str(run_dir), str(breast_dir / "breastmnist.npz")],
    ]  # fmt: skip
    proc = _medbench(site, "-c", COMMANDS, json.dumps(commands))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 0, 0, 0], proc.stderr
    recorded = json.loads((run_dir / "results.json").read_text())["config"]
    assert recorded["model"] == "tinyplug" and len(recorded["model_source_hash"]) == 12
    assert len(list((grid / "runs" / "breastmnist-28").glob("*/*/results.json"))) == 2
    assert (grid / "runs" / "breastmnist-28" / "tinyplug").is_dir()
    assert "max |difference| from PyTorch" in proc.stdout
    assert len([ln for ln in proc.stdout.splitlines() if "test_images[" in ln]) == 16


def test_without_the_plugin_on_the_path_its_name_is_unknown():
    assert "tinyplug" not in list_models(None)
    with pytest.raises(MedbenchError, match="unknown model 'tinyplug'"):
        build_model("tinyplug", 1, 2, 28)
