"""Transfer learning: pretrained weights (timm files, medbench runs, the hub offline), the
fine-tune / linear-probe / k-NN modes, input adapters and MedMNIST-to-MedMNIST transfer.
The timm weights are written by the tests: nothing is downloaded."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from medbench.errors import MedbenchError
from medbench.models import build_model
from medbench.models.adapters import InputAdapter
from medbench.runs.results import RunResults
from medbench.training.config import TrainConfig
from medbench.training.pretrained import load_matching, load_source, prepare_pretrained
from medbench.workflows.transfer import knn_evaluate, knn_probabilities, train_or_reuse, transfer

MODEL = "timm:test_efficientnet"  # ~0.1M parameters


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Synthetic breast/pneumonia data, an "ImageNet" timm weights file, and one
    pretrain-on-pneumonia -> fine-tune-on-breast transfer, run once."""
    from medbench.data.synthetic import write_synthetic_like

    root = tmp_path_factory.mktemp("transfer")
    for name in ("breastmnist", "pneumoniamnist"):
        write_synthetic_like(root / "data", name, 28, n_train=64, n_val=32, n_test=32)
    torch.manual_seed(0)
    rgb = timm.create_model("test_efficientnet", num_classes=1000)
    torch.save(rgb.state_dict(), root / "imagenet.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # synthetic files are not the official ones
        result = transfer(["pneumoniamnist"], _config(root), root / "t", mode="full")
    return root, result


def _config(root, **kw) -> TrainConfig:
    return TrainConfig(
        dataset="breastmnist", model=MODEL, epochs=1, batch_size=32, device="cpu",
        data_dir=str(root / "data"), **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_timm_weights_file_loads_with_first_conv_summed_for_gray_and_a_fresh_head(root):
    root, _ = root
    model = build_model(MODEL, 1, 2)
    head_before = model.classifier.weight.clone()
    scales, weights = prepare_pretrained(
        model, _config(root, pretrained=str(root / "imagenet.pth"))
    )
    assert weights == {
        "source": str(root / "imagenet.pth"),
        "sha256": hashlib.sha256((root / "imagenet.pth").read_bytes()).hexdigest(),
    }
    source = torch.load(root / "imagenet.pth")
    torch.testing.assert_close(model.conv_stem.weight, source["conv_stem.weight"].sum(1, True))
    torch.testing.assert_close(model.bn1.running_var, source["bn1.running_var"])
    torch.testing.assert_close(model.classifier.weight, head_before)
    assert scales[id(model.classifier.weight)] == 1.0
    assert scales[id(model.conv_stem.weight)] == 0.1


@pytest.mark.slow
def test_safetensors_weights_load_like_torch_weights(root, tmp_path):
    from safetensors.torch import save_file

    root, _ = root
    save_file(torch.load(root / "imagenet.pth"), tmp_path / "w.safetensors")
    report = load_matching(
        build_model(MODEL, 3, 2), load_source(str(tmp_path / "w.safetensors"), MODEL)
    )
    assert (
        report.loaded
        and not report.adapted
        and report.head == ["classifier.weight", "classifier.bias"]
    )


@pytest.mark.slow
def test_linear_probe_trains_only_the_head_and_keeps_backbone_statistics(root):
    root, _ = root
    model = build_model(MODEL, 1, 2)
    prepare_pretrained(
        model, _config(root, pretrained=str(root / "imagenet.pth"), finetune="linear-probe")
    )
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "classifier.weight", "classifier.bias",
    }  # fmt: skip
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 1, 28, 28) * 3 + 1)
    torch.testing.assert_close(model.bn1.running_mean, before)


@pytest.mark.slow
def test_hub_weights_offline_are_a_clear_error(root):
    from huggingface_hub import constants

    root, _ = root
    assert constants.HF_HUB_OFFLINE  # set by conftest before huggingface_hub was imported
    with pytest.raises(MedbenchError, match="--pretrained PATH"):
        prepare_pretrained(build_model(MODEL, 1, 2), _config(root, pretrained="hub"))


@pytest.mark.slow
def test_medbench_run_loads_as_backbone_for_another_task(root):
    root, result = root
    pneumonia_run = result["pretrain"][0]["run_dir"]
    model = build_model(MODEL, 3, 8)  # bloodmnist-like: RGB, 8 classes
    report = load_matching(model, load_source(pneumonia_run, MODEL))
    assert report.adapted == ["conv_stem.weight"]  # 1 gray channel -> 3
    assert report.head == ["classifier.weight", "classifier.bias"]
    assert not report.skipped and not report.missing and len(report.loaded) > 10


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(root):
    root, result = root
    with pytest.raises(MedbenchError, match="same architecture|builds"):
        load_source(result["pretrain"][0]["run_dir"], "timm:test_resnet")


@pytest.mark.slow
def test_transfer_pretrains_on_the_source_then_finetunes_on_the_target(root):
    _, result = root
    source, target = result["pretrain"][0], result["target"]
    assert source["dataset"]["name"] == "pneumoniamnist"
    assert target["dataset"]["name"] == "breastmnist" and target["status"] == "finished"
    assert target["config"]["pretrained"] == source["run_dir"]
    assert target["config"]["finetune"] == "full"
    model_file = Path(source["run_dir"]) / "model.pt"  # the weights it started from, by hash
    assert target["pretrained_weights"] == {
        "source": str(model_file),
        "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
    }


@pytest.mark.slow
def test_a_finished_run_is_read_back_not_trained_again(root):
    root, result = root
    stage = result["pretrain"][0]
    results_file = Path(stage["run_dir"]) / "results.json"
    written = results_file.stat().st_mtime_ns
    config = TrainConfig.from_dict(stage["config"])
    again = train_or_reuse(config)
    assert isinstance(again, RunResults)
    assert again.run_dir == stage["run_dir"] and again.steps == stage["steps_trained"]
    assert results_file.stat().st_mtime_ns == written


def test_knn_probabilities_are_neighbour_votes():
    reference = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]  # two references at e0
    labels = np.array([[1], [1], [0], [0]])
    # The second query's third neighbour is either reference at e0: both have label 1, so
    # the vote is the same whichever the search takes.
    query = np.array([[1, 0, 0], [0, 0.9, 0.44]], dtype=np.float32)
    probs = knn_probabilities(
        reference, labels, query / np.linalg.norm(query, axis=1, keepdims=True), "binary-class", k=3
    )
    np.testing.assert_allclose(probs, [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])


@pytest.mark.slow
def test_knn_evaluate_gives_official_metrics_without_training(root):
    from medbench.data import load_dataset

    root, result = root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset("breastmnist", 28, root / "data", progress=False)
    out = knn_evaluate(result["pretrain"][0]["run_dir"], data, k=11)
    assert out["k"] == 11 and out["timing"]["train_seconds"] == 0.0
    for split in ("val", "test"):
        assert 0.0 <= out["metrics"][split]["acc"] <= 1.0 and out["metrics"][split]["n"] == 32


@pytest.mark.slow
def test_transfer_knn_mode_probes_pretrained_weights_file(root):
    root, _ = root
    config = _config(root, pretrained=str(root / "imagenet.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = transfer([], config, root / "k", mode="knn")["target"]
    assert (
        out["kind"] == "knn-probe" and (root / "k" / "knn-breastmnist" / "results.json").is_file()
    )


def test_pad_adapter_centres_the_image_on_black():
    seen = {}

    class Probe(torch.nn.Module):
        num_features = 3

        def forward_features(self, x):
            seen["x"] = x
            return x.mean((2, 3))

        def forward_head(self, f, pre_logits=False):
            return f

    x = torch.ones(2, 1, 28, 28)
    InputAdapter(Probe(), mode="pad", target_size=32, in_channels=1)(x)
    assert seen["x"].shape == (2, 3, 32, 32)
    assert (seen["x"][:, :, 2:30, 2:30] == 1).all() and seen["x"][:, :, :2].eq(-1).all()
    InputAdapter(Probe(), mode="upsample", target_size=64, in_channels=1)(x)
    assert seen["x"].shape == (2, 3, 64, 64) and seen["x"].eq(1).all()


@pytest.mark.slow
def test_adapted_timm_backbone_loads_rgb_weights_and_classifies_gray_images(root):
    root, _ = root
    backbone = timm.create_model("test_efficientnet", num_classes=2)  # built with 3 channels
    model = InputAdapter(backbone, mode="upsample", target_size=64, in_channels=1)
    report = load_matching(model, load_source(str(root / "imagenet.pth"), MODEL))
    assert not report.adapted and not report.skipped
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_timm_models_take_input_adapter_options_through_the_registry():
    import torch

    from medbench.models import build_model
    from medbench.models.adapters import InputAdapter

    model = build_model("timm:resnet10t", 1, 2, image_size=28, input_adapter="pad", input_size=64)
    assert isinstance(model, InputAdapter)
    x = torch.zeros(2, 1, 28, 28)
    assert model(x).shape == (2, 2)
    assert torch.equal(model(x), model.forward_head(model.forward_features(x)))
