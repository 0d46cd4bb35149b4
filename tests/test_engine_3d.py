"""Volumes through the same engine: 3D models train, resume bit-exactly and are refused for 2D data."""

from __future__ import annotations

import warnings

import pytest
import torch

from medbench.data import load_dataset
from medbench.data.augment import BatchAugment, BatchMix
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import build_model, count_parameters, list_models
from medbench.training import checkpoint as ckpt
from medbench.training.callbacks import Callback
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.evaluation import evaluate_run
from medbench.training.inference import to_unit_float
from medbench.utils.runtime import resolve_runtime

TINY = {"width": 0.125}  # stage widths 8-64


def _load(tmp_path, name: str, **sizes):
    write_synthetic_like(tmp_path / "data", name, 28, seed=1, **sizes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        return load_dataset(name, 28, tmp_path / "data", progress=False)


@pytest.fixture
def nodules(tmp_path):
    return _load(tmp_path, "nodulemnist3d", n_train=8, n_val=4, n_test=4)


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(dataset="nodulemnist3d", model="resnet18_acs", epochs=1, batch_size=4,
                model_options=dict(TINY), run_dir=str(tmp_path / name), device="cpu",
                keep_checkpoint=True)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_loaded_volumes_become_float_n_1_d_h_w_tensors_in_0_1(nodules):
    x = to_unit_float(nodules.train.images[:3], resolve_runtime("cpu", "fp32", True))
    assert x.shape == (3, 1, 28, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x[:, 0], nodules.train.images[:3, ..., 0].float() / 255)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(3))
def test_each_3d_model_trains_a_few_steps_on_volumes(tmp_path, nodules, name):
    results = train(config(tmp_path, model=name), data=nodules, progress=False, measure=False)
    assert results.history[-1].step == 2 and results.history[-1].train_loss > 0
    assert results.model.n_params == count_parameters(build_model(name, 1, 2, 28, **TINY))
    assert 0 <= results.test["acc"] <= 1 and results.test["n"] == 4


class Interrupt(Exception):
    pass


class InterruptAfterFirstRound(Callback):
    def on_round_end(self, event):
        if event.record["round"] == 1:
            raise Interrupt


@pytest.mark.slow
def test_a_resumed_3d_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(tmp_path, nodules):
    full = train(config(tmp_path, "full", epochs=2), data=nodules, progress=False, measure=False)
    with pytest.raises(Interrupt):
        train(config(tmp_path, "part", epochs=2), data=nodules, progress=False, measure=False,
              callbacks=[InterruptAfterFirstRound()])  # fmt: skip
    resumed = train(config(tmp_path, "part", epochs=2), data=nodules, progress=False,
                    measure=False, resume=True)  # fmt: skip
    theirs = ckpt.load(tmp_path / "part" / "checkpoint.pt")["model"]
    for key, value in ckpt.load(tmp_path / "full" / "checkpoint.pt")["model"].items():
        assert torch.equal(value, theirs[key]), key
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    assert resumed.test == full.test


@pytest.mark.slow
def test_a_3d_run_measures_the_speed_of_volumes(tmp_path, nodules):
    results = train(config(tmp_path, model="resnet18_2.5d"), data=nodules, progress=False)
    timing = results.timing
    assert timing.latency_ms_per_image > 0 and timing.throughput_images_per_second > 0


def test_a_3d_model_for_a_2d_dataset_is_refused_and_leaves_no_run_folder(tmp_path):
    blood = _load(tmp_path, "bloodmnist", n_train=8, n_val=4, n_test=4)
    cfg = config(tmp_path, dataset="bloodmnist", model="resnet18_3d")
    with pytest.raises(MedbenchError, match="resnet18_3d is for 3D volumes but bloodmnist"):
        train(cfg, data=blood, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_2d_model_for_a_3d_dataset_is_refused(tmp_path, nodules):
    with pytest.raises(MedbenchError, match="resnet18 is for 2D images but nodulemnist3d"):
        train(config(tmp_path, model="resnet18", model_options={}), data=nodules, progress=False)


def test_a_2d_only_augmentation_is_refused_for_volumes():
    with pytest.raises(MedbenchError, match="'randaugment' is for 2D images; organmnist3d"):
        BatchAugment("randaugment", "organmnist3d", spatial_dims=3)


def test_a_3d_run_asking_a_2d_only_augmentation_leaves_no_run_folder(tmp_path, nodules):
    with pytest.raises(MedbenchError, match="'strong' is for 2D images; nodulemnist3d"):
        train(config(tmp_path, augment="strong"), data=nodules, progress=False)
    assert not (tmp_path / "run").exists()


def _volumes(n=16):
    return torch.rand(n, 1, 6, 7, 8, generator=torch.Generator().manual_seed(0))


def test_basic_3d_augmentation_flips_left_and_right_where_the_dataset_allows():
    x = _volumes()
    out = BatchAugment("basic", "fracturemnist3d", max_shift=0.0, spatial_dims=3)(
        x, torch.Generator().manual_seed(3)
    )
    same = [torch.equal(o, v) for o, v in zip(out, x, strict=True)]
    flipped = [torch.equal(o, v.flip(-1)) for o, v in zip(out, x, strict=True)]
    assert all(s or f for s, f in zip(same, flipped, strict=True))
    assert any(same) and any(flipped)


def test_basic_3d_augmentation_never_mirrors_organmnist3d():
    x = _volumes()
    augment = BatchAugment("auto", "organmnist3d", max_shift=0.0, spatial_dims=3)
    assert torch.equal(augment(x, torch.Generator().manual_seed(3)), x)


def test_3d_shifts_move_whole_voxels_and_follow_the_generator():
    x = _volumes()
    augment = BatchAugment("basic", "organmnist3d", max_shift=0.25, spatial_dims=3)
    a = augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, x)
    values = set(x.flatten().tolist()) | {0.0}
    assert set(a.flatten().tolist()) <= values  # no interpolation: every voxel is a voxel


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_volumes_and_their_targets_alike(mixup, cutmix):
    x, y = _volumes(8), torch.arange(8) % 3
    mixed, target = BatchMix(mixup, cutmix, 3, "multi-class")(
        x, y, torch.Generator().manual_seed(1)
    )
    assert mixed.shape == x.shape
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    if cutmix:  # a pasted box spans the depth: every slice of a volume is cut alike
        changed = (mixed != x).any(1)
        assert torch.equal(changed, changed[:, :1].expand_as(changed))


@pytest.mark.slow
def test_evaluating_a_saved_3d_run_reproduces_its_test_metrics(tmp_path, nodules):
    r = train(config(tmp_path, model="resnet18_3d"), data=nodules, progress=False, measure=False)
    again = evaluate_run(tmp_path / "run", data_dir=str(tmp_path / "data"), progress=False)
    assert again["test"]["acc"] == r.test["acc"]
    assert again["test"]["auc"] == pytest.approx(r.test["auc"])
