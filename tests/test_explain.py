"""`medbench explain` and `medbench.analysis.explain`: target layers, saliency maps, faithfulness,
the gallery and report, and the command's one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medbench.analysis.explain import (
    ExplainedRow,
    ExplainResult,
    choose_target_layer,
    deletion_insertion,
    explain_images,
    probability_function,
    saliency_maps,
    select_cases,
)
from medbench.analysis.explain_files import explain_run, explain_section
from medbench.cli import main
from medbench.data.catalogue import dataset_info
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError
from medbench.models import build_model
from medbench.training import checkpoint as ckpt

SMALL_VIT = (
    "timm:vit_tiny_patch16_224",
    {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 2},
)


def layer_output(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `module` returns inside `model.forward_features(x)`, seen by a forward hook."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    return seen[-1]


# --------------------------------------------------------------------------- target layer


@pytest.mark.parametrize(
    "name, size, expected",
    [
        ("advanced_cnn", 28, "stages.3"),  # not the pooled gate channels concatenated before it
        ("efficientnet", 28, "head"),
        pytest.param("resnet18", 28, "layer4", marks=pytest.mark.slow),
        ("timm:resnet10t", 64, "layer4"),
    ],
)
def test_target_layer_is_the_last_module_producing_the_feature_map(name, size, expected):
    model = build_model(name, 1, 3, image_size=size).eval()
    layer = choose_target_layer(model, (1, size, size))
    assert layer.name == expected and layer.kind == "feature map"
    x = torch.randn(2, 1, size, size)
    out = layer_output(model, layer.module, x)
    with torch.no_grad():
        features = model.forward_features(x)
    assert out.shape[2:] == features.shape[2:] == layer.grid
    assert torch.equal(out, features[:, -out.shape[1] :])


def test_input_adapter_models_use_their_backbones_layer():
    model = build_model(
        "timm:resnet10t", 1, 2, image_size=28, input_adapter="upsample", input_size=64
    )
    layer = choose_target_layer(model.eval(), (1, 28, 28))
    assert layer.name == "backbone.layer4" and layer.grid == (2, 2)


class FunctionalEnd(nn.Module):
    """forward_features ends with a functional op after its last module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv2(self.conv1(x))) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


def test_without_an_exact_match_the_last_map_on_the_feature_grid_is_chosen():
    layer = choose_target_layer(FunctionalEnd(), (1, 28, 28))
    assert layer.name == "conv2" and layer.grid == (14, 14)


def test_a_named_layer_is_used_and_an_unknown_name_lists_the_last_maps():
    model = build_model("advanced_cnn", 1, 2, image_size=28).eval()
    layer = choose_target_layer(model, (1, 28, 28), "stages.2")
    assert layer.module is model.stages[2] and layer.grid == (4, 4)
    with pytest.raises(MedbenchError, match="no layer 'stages.9'.*stages.3"):
        choose_target_layer(model, (1, 28, 28), "stages.9")


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_vit_layer_is_the_last_blocks_norm1_without_its_prefix_tokens(reg_tokens):
    name, options = SMALL_VIT
    model = build_model(name, 1, 3, image_size=28, reg_tokens=reg_tokens, **options).eval()
    layer = choose_target_layer(model, (1, 28, 28))
    assert layer.name == "blocks.1.norm1" and layer.kind == "tokens" and layer.grid == (7, 7)
    tokens = layer_output(model, layer.module, torch.randn(2, 1, 28, 28))
    assert tokens.shape[1] == 1 + reg_tokens + 49
    grid = layer.reshape_transform(tokens)
    assert grid.shape == (2, 48, 7, 7)
    # Patch token k sits at row k // 7, column k % 7 of the map.
    assert torch.equal(grid[:, :, 1, 3], tokens[:, 1 + reg_tokens + 10, :])


def test_a_model_without_spatial_features_is_a_clear_error():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(28 * 28, 2)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    with pytest.raises(MedbenchError, match="spatial feature map or transformer tokens"):
        choose_target_layer(Flat(), (1, 28, 28))


# --------------------------------------------------------------------------- every family


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, options, channels",
    [
        ("advanced_cnn", {}, 1),
        ("efficientnet", {}, 3),
        ("resnet18", {}, 1),
        ("timm:resnet10t", {}, 1),
        SMALL_VIT + (1,),
    ],
)
def test_every_family_gives_finite_maps_of_the_input_size(name, options, channels):
    torch.manual_seed(0)
    model = build_model(name, channels, 3, image_size=28, **options).eval()
    x = torch.randn(2, channels, 28, 28)
    for method in ("gradcam", "occlusion"):
        maps = saliency_maps(method, model, x, [0, 2], "multi-class")
        assert maps.shape == (2, 28, 28) and np.isfinite(maps).all()


# --------------------------------------------------------------------------- planted signal

REGION = (slice(8, 16), slice(8, 16))


class Masked(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class PlantedRegion(nn.Module):
    """Class 1's evidence is the brightness of one 8x8 square; nothing else reaches the output."""

    def __init__(self, size: int = 28) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        nn.init.ones_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.relu = nn.ReLU()
        mask = torch.zeros(1, 1, size, size)
        mask[(..., *REGION)] = 1
        self.masked = Masked(mask)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-40.0], [40.0]]))
            self.fc.bias.copy_(torch.tensor([1.0, -1.0]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked(self.relu(self.conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


def planted_images(n: int = 3, seed: int = 0) -> torch.Tensor:
    """Normalised images: noise everywhere, the planted square bright."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    x[(..., *REGION)] = 0.6 + 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    return x


def mass_inside(maps: np.ndarray) -> np.ndarray:
    positive = np.clip(maps, 0, None)
    return positive[(..., *REGION)].sum(axis=(1, 2)) / positive.sum(axis=(1, 2))


def test_planted_model_predicts_class_1_on_the_planted_images():
    probs = probability_function(PlantedRegion(), "binary-class")(planted_images())
    assert (probs[:, 1] > 0.9).all()


@pytest.mark.parametrize(
    "method, least", [("gradcam", 0.99), pytest.param("occlusion", 0.6, marks=pytest.mark.slow)]
)
def test_maps_concentrate_on_the_planted_region(method, least):
    model = PlantedRegion().eval()
    maps = saliency_maps(method, model, planted_images(), [1, 1, 1], "binary-class")
    # The square is 64 of 784 pixels (8%); occlusion windows overlapping it spill over its edge.
    assert (mass_inside(maps) >= least).all()
    assert (np.clip(maps, 0, None)[(..., *REGION)].mean(axis=(1, 2)) > 0).all()


def test_deletion_of_the_planted_region_first_beats_random_and_insertion_too():
    model = PlantedRegion().eval()
    x = planted_images()
    rows = [ExplainedRow(i, 1, "predicted", [1], [1], 0.0, True) for i in range(len(x))]
    explain_images(model, x, rows, "binary-class", ("gradcam", "occlusion"), steps=14)
    for row in rows:
        for method in ("gradcam", "occlusion"):
            assert row.deletion[method] < row.deletion["random"] - 0.2
            # The blurred start keeps the square bright on average, so insertion starts high.
            assert row.insertion[method] > row.insertion["random"]


def test_deletion_follows_the_saliency_order():
    model = PlantedRegion().eval()
    x = planted_images(1)
    inside = np.zeros((28, 28))
    inside[REGION] = 1
    prob_fn = probability_function(model, "binary-class")
    good = deletion_insertion(prob_fn, x, inside, 1, steps=14)
    reversed_ = deletion_insertion(prob_fn, x, -inside, 1, steps=14)
    assert good[0] < reversed_[0] and good[1] > reversed_[1]
    assert min(good + reversed_) >= 0 and max(good + reversed_) <= 1


def test_equal_saliency_is_removed_in_random_not_raster_order():
    model = PlantedRegion().eval()
    prob_fn = probability_function(model, "binary-class")
    x = planted_images(1)
    # A flat map ranks nothing: its deletion curve is a random one, not the raster order
    # that reaches the planted square (rows 8-15) within the first 60% of the pixels.
    flat = [deletion_insertion(prob_fn, x, np.zeros((28, 28)), 1, 14, seed)[0] for seed in range(3)]
    raster = deletion_insertion(prob_fn, x, -np.arange(784.0).reshape(28, 28), 1, 14)[0]
    assert len(set(flat)) == 3 and raster not in flat


# --------------------------------------------------------------------------- case selection


def test_binary_cases_are_correct_and_wrong_per_class_with_the_true_class_of_wrong_ones():
    labels = np.array([0, 0, 0, 1, 1, 1])[:, None]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    rows = select_cases(labels, probs, "binary-class", per_class=1)
    got = [(r.index, r.target, r.role, r.correct) for r in rows]
    assert got == [
        (0, 0, "predicted", True),
        (1, 1, "predicted", False),
        (1, 0, "true", False),
        (3, 1, "predicted", True),
        (4, 0, "predicted", False),
        (4, 1, "true", False),
    ]


def test_multilabel_cases_explain_each_positive_label_found_or_missed():
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.1, 0.6, 0.7]])
    rows = select_cases(labels, probs, "multi-label, binary-class", per_class=2)
    got = [(r.index, r.target, r.correct) for r in rows]
    assert got == [(0, 0, True), (1, 0, False), (1, 1, True), (2, 2, True), (0, 2, False)]
    assert all(r.role == "label" for r in rows)


# --------------------------------------------------------------------------- a run folder


# A narrow, shallow efficientnet: the run tests explain it in seconds.
SMALL_EFFICIENTNET = {"width": 0.25, "depth": 0.25}


def save_run(folder: Path, dataset: str, model_name: str = "efficientnet", **options) -> Path:
    """An untrained model saved as a run's model.pt for `dataset`'s catalogue entry."""
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = build_model(model_name, info.n_channels, info.n_classes, image_size=28, **options)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": ckpt.MODEL_FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "model": model_name,
            "model_options": options,
            "in_channels": info.n_channels,
            "num_classes": info.n_classes,
            "image_size": 28,
            "task": info.task,
            "label_names": list(info.label_names),
            "dataset": dataset,
            "normalization": {"mean": 0.5, "std": 0.5},
            "temperature": 1.0,
            "seed": 0,
            "state_dict": model.state_dict(),
        },
        folder / "model.pt",
    )
    return folder


def explain_synthetic(
    tmp_path: Path, data_dir: Path, dataset: str, n_test: int = 12, **kwargs
) -> ExplainResult:
    write_synthetic_like(data_dir, dataset, n_train=8, n_val=4, n_test=n_test)
    run = save_run(tmp_path / "run", dataset, **SMALL_EFFICIENTNET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic file is not the official one
        return explain_run(run, tmp_path / "out", data_dir=data_dir, device="cpu", **kwargs)


@pytest.mark.slow
def test_explain_run_writes_gallery_tables_and_report(tmp_path):
    result = explain_synthetic(tmp_path, tmp_path / "data", "breastmnist", per_class=2, steps=8)
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "explain.json", "cases.csv", "faithfulness.csv",
            "explanations.npz"} <= names  # fmt: skip
    galleries = sorted(n for n in names if n.startswith("gallery-"))
    assert galleries and all(Image.open(out / g).size[0] > 300 for g in galleries)
    assert len(result.rows) >= 2 and result.target_layer["name"] == "head"
    report = (out / "report.md").read_text()
    for word in ("Grad-CAM", "Occlusion", "random", *galleries):
        assert word in report
    with np.load(out / "explanations.npz") as npz:
        assert npz["gradcam_maps"].shape == (len(result.rows), 28, 28)
        assert npz["occlusion_maps"].shape == (len(result.rows), 28, 28)
    again = ExplainResult.from_json(json.loads((out / "explain.json").read_text()))
    assert again.rows == result.rows and [s.method for s in again.summary] == [
        "gradcam", "occlusion", "random",
    ]  # fmt: skip
    lines = (out / "faithfulness.csv").read_text().splitlines()
    assert lines[0].startswith("dataset,model,method") and len(lines) == 4


@pytest.mark.slow
def test_multilabel_run_explains_positive_labels_only(tmp_path):
    result = explain_synthetic(
        tmp_path,
        tmp_path / "data",
        "chestmnist",
        n_test=4,
        per_class=1,
        steps=4,
        methods=["occlusion"],
    )
    assert result.rows and all(r.role == "label" and r.target in r.true for r in result.rows)
    assert result.methods == ["occlusion"] and result.target_layer == {}


def test_section_links_the_galleries_under_a_prefix():
    rows = [ExplainedRow(0, 1, "predicted", [1], [1], 0.9, True, {"gradcam": 0.2, "random": 0.5},
                         {"gradcam": 0.8, "random": 0.6})]  # fmt: skip
    from medbench.analysis.explain import summarize

    result = ExplainResult(
        run_dir="r", out_dir="o", model="resnet18", dataset="breastmnist", task="binary-class",
        label_names=["malignant", "normal, benign"], image_size=28, methods=["gradcam"],
        target_layer={"name": "layer4", "kind": "feature map", "grid": [4, 4]},
        settings={"per_class": 1, "steps": 8}, rows=rows, summary=summarize(rows, ["gradcam"]),
        files={"gallery-1-normal-benign.png": "o/gallery-1-normal-benign.png"},
    )  # fmt: skip
    text = explain_section(result, image_prefix="explain/")
    assert "(explain/gallery-1-normal-benign.png)" in text and "gallery-0" not in text
    assert "| Grad-CAM | 1 | 0.200 ± " in text and "| 100% | 100% |" in text
    assert "`layer4` (a 4x4 feature map)" in text


# --------------------------------------------------------------------------- CLI errors


def cli_error(capsys, *argv: str) -> str:
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medbench: error:")
    return err


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    err = cli_error(capsys, str(tmp_path), "--out", str(tmp_path / "out"))
    assert "no model.pt" in err


@pytest.mark.slow  # building a 3D ResNet takes seconds
def test_a_3d_run_is_a_one_line_error(tmp_path, capsys):
    run = save_run(tmp_path / "run3d", "organmnist3d", "resnet18_3d")
    err = cli_error(capsys, str(run), "--out", str(tmp_path / "out"))
    assert "3D model" in err


def test_an_unknown_method_is_a_one_line_error(tmp_path, capsys):
    run = save_run(tmp_path / "run", "breastmnist")
    err = cli_error(capsys, str(run), "--out", str(tmp_path / "out"), "--methods", "gradcam,lime")
    assert "lime" in err and "occlusion" in err
