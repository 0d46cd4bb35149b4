"""3D runs downstream: grids mixing 2D and 3D sets, export, predict on volumes, ensembles, cards."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medbench.data import load_dataset
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import list_models
from medbench.serving.export import export_model, normalized_input
from medbench.serving.predict import predict
from medbench.serving.volume_inputs import conform_volumes, to_uint8
from medbench.training import checkpoint as ckpt
from medbench.training.callbacks import Callback
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.inference import load_trained_model
from medbench.training.modelcard import write_model_card
from medbench.workflows.ensemble import build_ensemble
from medbench.workflows.grid_plan import pair_models, plan_grid
from support.grids import run_benchmark_with

TINY = {"width": 0.125}


def _data(tmp_path, name="nodulemnist3d", **sizes):
    write_synthetic_like(tmp_path / "data", name, 28, seed=1, **sizes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        return load_dataset(name, 28, tmp_path / "data", progress=False)


@pytest.fixture
def nodules(tmp_path):
    return _data(tmp_path, n_train=8, n_val=4, n_test=4)


def _config(tmp_path, model="resnet18_acs", name="run", **kw) -> TrainConfig:
    base = dict(dataset="nodulemnist3d", model=model, epochs=1, batch_size=4, device="cpu",
                model_options=dict(TINY), run_dir=str(tmp_path / name), keep_checkpoint=True,
                data_dir=str(tmp_path / "data"))  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _train(tmp_path, nodules, model="resnet18_acs", name="run", resume=False, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        return train(_config(tmp_path, model, name, **kw), data=nodules, progress=False,
                     measure=False, resume=resume)  # fmt: skip


# ----------------------------------------------------------------------------- grids


def test_a_grid_pairs_each_dataset_with_the_models_of_its_kind():
    paired = pair_models(
        ["breastmnist", "organmnist3d"], ["resnet18", "resnet18_acs", "resnet18_3d"]
    )
    assert paired == {"breastmnist": ["resnet18"], "organmnist3d": ["resnet18_acs", "resnet18_3d"]}


def test_a_mixed_grid_plans_only_cells_whose_model_fits_the_dataset(tmp_path):
    cells = plan_grid(["breastmnist", "organmnist3d"], ["resnet18", "resnet18_2.5d"], [0, 1],
                      out=tmp_path, base={"epochs": 1})  # fmt: skip
    pairs = {(c.config.dataset, c.config.model) for c in cells}
    assert pairs == {("breastmnist", "resnet18"), ("organmnist3d", "resnet18_2.5d")}
    assert len(cells) == 4


def test_a_3d_model_in_a_grid_of_2d_sets_is_one_line_naming_it():
    with pytest.raises(MedbenchError, match="resnet18_3d is for 3D volumes but no dataset"):
        pair_models(["breastmnist"], ["resnet18", "resnet18_3d"])


def test_a_3d_set_with_no_3d_model_in_the_grid_is_one_line_naming_it():
    with pytest.raises(MedbenchError, match="organmnist3d holds 3D volumes but no model"):
        pair_models(["breastmnist", "organmnist3d"], ["resnet18"])


@pytest.mark.slow
def test_one_grid_with_a_2d_and_a_3d_set_gives_one_report_with_the_published_3d_rows(tmp_path):
    for name in ("breastmnist", "organmnist3d"):
        write_synthetic_like(tmp_path / "data", name, 28, n_train=8, n_val=4, n_test=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        outcome = run_benchmark_with(
            "breastmnist,organmnist3d", "resnet18,resnet18_acs", 1, epochs=1,
            out=tmp_path / "grid", data_dir=tmp_path / "data", progress=False, device="cpu",
            train_config={"model_options": dict(TINY), "batch_size": 4},
        )  # fmt: skip
    assert outcome.ok
    report = (tmp_path / "grid" / "REPORT.md").read_text()
    assert "| breastmnist | resnet18 | this study" in report
    assert "| organmnist3d | resnet18_acs | this study" in report
    assert "| organmnist3d | ResNet-18+ACS (28) | published: MedMNIST v2" in report
    assert (tmp_path / "grid" / "plots" / "confusion_organmnist3d.png").is_file()


# ----------------------------------------------------------------------------- each model


class _Stop(Exception):
    pass


class _StopAfterFirstRound(Callback):
    def on_round_end(self, event):
        raise _Stop


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(3))
def test_each_3d_model_resumes_bit_exactly_and_exports_to_onnx_matching_pytorch(
    tmp_path, nodules, name
):
    full = _train(tmp_path, nodules, name, "full", epochs=2)
    with pytest.raises(_Stop), warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        train(_config(tmp_path, name, "part", epochs=2), data=nodules, progress=False,
              measure=False, callbacks=[_StopAfterFirstRound()])  # fmt: skip
    resumed = _train(tmp_path, nodules, name, "part", epochs=2, resume=True)
    theirs = ckpt.load(tmp_path / "part" / "checkpoint.pt")["model"]
    for key, value in ckpt.load(tmp_path / "full" / "checkpoint.pt")["model"].items():
        assert torch.equal(value, theirs[key]), key
    assert resumed.test == full.test

    result = export_model(tmp_path / "full", "onnx")
    assert result.max_abs_diff <= 1e-4 and "test images" in result.check_source
    model, _ = load_trained_model(tmp_path / "full")
    volumes = nodules.test.images.numpy()
    x = normalized_input(volumes)
    assert x.shape == (4, 1, 28, 28, 28)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-4)


# ----------------------------------------------------------------------------- predict


@pytest.fixture
def run_3d(tmp_path, nodules):
    _train(tmp_path, nodules, "resnet18_2.5d")
    return tmp_path / "run"


def _saved_test_probs(run_dir):
    """The run's test probabilities at temperature 1, from the logits it saved."""
    logits = torch.from_numpy(np.load(run_dir / "predictions.npz")["test_logits"])
    return logits.double().softmax(1).numpy()


@pytest.mark.slow
def test_predict_on_a_npy_volume_gives_the_runs_own_test_probabilities(tmp_path, nodules, run_3d):
    volume = nodules.test.images[0, ..., 0].numpy()  # (28, 28, 28) uint8, as in the npz
    np.save(tmp_path / "one.npy", volume)
    np.save(tmp_path / "batch.npy", nodules.test.images[..., 0].numpy())
    one = predict(run_3d, [tmp_path / "one.npy"], device="cpu")
    batch = predict(run_3d, [tmp_path / "batch.npy"], device="cpu")
    saved = _saved_test_probs(run_3d)
    assert one.names == [str(tmp_path / "one.npy")] and one.n_converted == 0
    assert batch.names[1] == f"{tmp_path / 'batch.npy'}[1]"
    np.testing.assert_allclose(batch.probabilities, saved, atol=1e-5)
    np.testing.assert_allclose(one.probabilities[0], saved[0], atol=1e-5)


@pytest.mark.slow
def test_predict_on_the_npz_of_a_3d_set_reads_its_test_volumes(tmp_path, run_3d):
    result = predict(run_3d, [tmp_path / "data" / "nodulemnist3d.npz"], device="cpu")
    assert len(result) == 4 and result.names[0].endswith("nodulemnist3d.npz:test_images[0]")


@pytest.mark.slow
def test_predict_converts_a_volume_of_another_shape_and_range_and_says_so(tmp_path, run_3d):
    ct = np.random.default_rng(0).normal(0, 400, size=(40, 32, 36)).astype(np.float32)
    np.save(tmp_path / "ct.npy", ct)
    with pytest.warns(MedbenchWarning, match=r"converted 1 of 1 volumes to the model's 28\^3"):
        result = predict(run_3d, [tmp_path / "ct.npy"], device="cpu")
    assert result.probabilities.shape == (1, 2) and result.n_converted == 1


@pytest.mark.slow
def test_predict_reads_nifti_volumes_through_nibabel(tmp_path, nodules, run_3d):
    nibabel = pytest.importorskip("nibabel")
    volume = nodules.test.images[2, ..., 0].numpy()
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    result = predict(run_3d, [tmp_path / "scan.nii.gz"], device="cpu")
    saved = _saved_test_probs(run_3d)
    np.testing.assert_allclose(result.probabilities[0], saved[2], atol=1e-5)


@pytest.mark.slow
def test_a_3d_model_refuses_png_images_in_one_line(tmp_path, run_3d):
    (tmp_path / "x.png").write_bytes(b"not read")
    with pytest.raises(MedbenchError, match="is not a volume file; a 3D model reads"):
        predict(run_3d, [tmp_path / "x.png"], device="cpu")


def test_a_file_holding_no_volume_is_one_line_naming_its_shape(tmp_path):
    from medbench.serving.predict import read_volumes

    np.save(tmp_path / "flat.npy", np.zeros((28, 28), np.uint8))
    with pytest.raises(MedbenchError, match=r"must hold a volume .* got shape \(28, 28\)"):
        read_volumes(tmp_path / "flat.npy")


def test_volume_intensities_map_to_uint8_as_medmnist_stores_them():
    unit = np.linspace(0, 1, 27, dtype=np.float32).reshape(3, 3, 3)
    assert to_uint8(unit)[0].max() == 255 and to_uint8(unit)[0].min() == 0
    hu = np.linspace(-1000, 3000, 27).reshape(3, 3, 3)
    scaled, rescaled = to_uint8(hu)
    assert rescaled and scaled.dtype == np.uint8 and (scaled.min(), scaled.max()) == (0, 255)
    same = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    assert to_uint8(same) == (same, False)


def test_resampled_volumes_have_the_models_shape_and_keep_a_constant_volume_constant():
    volumes = np.full((2, 40, 30, 20), 77, np.uint8)
    out, done = conform_volumes(volumes, 28)
    assert out.shape == (2, 28, 28, 28, 1) and (out == 77).all() and done.resampled == 2


# ----------------------------------------------------------------------------- ensembles, cards


@pytest.mark.slow
def test_an_ensemble_of_3d_runs_predicts_volumes(tmp_path, nodules):
    for seed in (0, 1):
        _train(tmp_path, nodules, "resnet18_acs", f"s{seed}", seed=seed)
    result = build_ensemble([tmp_path / "s0", tmp_path / "s1"], "average", tmp_path / "ens",
                            data=nodules)  # fmt: skip
    assert 0 <= result["metrics"]["test"]["acc"] <= 1
    np.save(tmp_path / "v.npy", nodules.test.images[..., 0].numpy())
    predicted = predict(tmp_path / "ens", [tmp_path / "v.npy"], device="cpu")
    np.testing.assert_allclose(predicted.probabilities.sum(1), 1.0, atol=1e-5)
    assert len(predicted) == 4


@pytest.mark.slow
def test_a_3d_runs_model_card_names_its_volumes(tmp_path, nodules):
    _train(tmp_path, nodules, "resnet18_3d")
    text = write_model_card(tmp_path / "run").read_text()
    assert "resnet18_3d" in text and "nodulemnist3d" in text
    assert "28x28x28" in text


# ----------------------------------------------------------------------------- official recipe


def test_the_official_3d_recipe_is_a_named_config_with_the_experiments_protocol():
    from medbench.training.config import load_config_file, recipe_names

    assert {"official", "official-3d", "official-3d-shape"} <= set(recipe_names())
    recipe = load_config_file("official-3d")
    assert recipe["optimizer"] == "adam" and recipe["lr"] == 1e-3 and recipe["epochs"] == 100
    assert recipe["schedule"] == "multistep" and recipe["batch_size"] == 32
    assert recipe["weight_decay"] == 0 and recipe["augment"] == "none"
    assert load_config_file("official-3d-shape")["augment"] == "intensity"
    TrainConfig(dataset="organmnist3d", model="resnet18_3d", **recipe).validate()


def test_a_missing_config_file_names_the_recipes(tmp_path):
    from medbench.training.config import load_config_file

    with pytest.raises(MedbenchError, match="named recipes: official"):
        load_config_file(tmp_path / "nope.json")


def test_intensity_augmentation_scales_each_volume_by_one_uniform_draw():
    from medbench.data.augment import BatchAugment

    x = torch.rand(64, 1, 4, 4, 4) * 0.5 + 0.25
    out = BatchAugment("intensity", "vesselmnist3d", spatial_dims=3)(
        x, torch.Generator().manual_seed(0)
    )
    ratio = out / x
    per_volume = ratio.flatten(1)
    torch.testing.assert_close(per_volume, per_volume[:, :1].expand_as(per_volume))
    assert per_volume.min() >= 0 and per_volume.max() <= 1 and per_volume[:, 0].std() > 0.2


def test_tuning_a_3d_model_samples_only_the_augmentations_volumes_take():
    import optuna

    from medbench.workflows.tune import suggest_recipe

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        recipe = suggest_recipe(trial, {}, min_epochs=1, max_epochs=2, model_options={},
                                spatial_dims=3)  # fmt: skip
        seen.add(recipe["augment"])
    assert seen == {"none", "basic"}
