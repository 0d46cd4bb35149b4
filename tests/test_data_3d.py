"""The six 3D MedMNIST sets: catalogue entries, the official npz layout, loading and validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from medmnist.info import INFO

from medbench.data import dataset_info, dataset_path, list_datasets, load_dataset
from medbench.data.synthetic import make_synthetic_splits, write_synthetic_like
from medbench.errors import MedbenchError, MedbenchWarning

THREE_D = ["organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d",
           "vesselmnist3d", "synapsemnist3d"]  # fmt: skip


def _load(name: str, size: int = 28, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        return load_dataset(name, size, download=False, **kwargs)


@pytest.mark.parametrize("name", THREE_D)
def test_every_3d_entry_comes_from_medmnist_info(name):
    info, entry = dataset_info(name), INFO[name]
    assert info.volumetric and info.spatial_dims == 3 and info.sizes == (28, 64)
    assert (info.md5(28), info.md5(64)) == (entry["MD5"], entry["MD5_64"])
    assert (info.url(28), info.url(64)) == (entry["url"], entry["url_64"])
    assert info.n_samples == entry["n_samples"]
    assert info.label_names == [entry["label"][str(i)] for i in range(len(entry["label"]))]
    assert (info.n_channels, info.task) == (1, entry["task"])
    assert info.file_name(28) == f"{name}.npz" and info.file_name(64) == f"{name}_64.npz"
    assert info.image_shape(28) == (28, 28, 28) and info.image_shape(64) == (64, 64, 64)


def test_organmnist3d_has_eleven_organs_and_the_others_two_or_three_classes():
    classes = {info.name: info.n_classes for info in list_datasets(volumetric=True)}
    assert classes == {"organmnist3d": 11, "nodulemnist3d": 2, "adrenalmnist3d": 2,
                       "fracturemnist3d": 3, "vesselmnist3d": 2, "synapsemnist3d": 2}  # fmt: skip


@pytest.mark.parametrize("size", [128, 224, 32])
def test_sizes_the_3d_sets_are_not_published_at_are_refused_naming_the_published_ones(size):
    with pytest.raises(MedbenchError, match="organmnist3d is published at 28, 64"):
        dataset_info("organmnist3d").file_name(size)


def test_2d_entries_still_have_their_image_shapes():
    assert dataset_info("dermamnist").image_shape(64) == (64, 64, 3)
    assert dataset_info("breastmnist").image_shape(28) == (28, 28)
    assert dataset_info("dermamnist").sizes == (28, 64, 128, 224)


@pytest.mark.parametrize("name", THREE_D)
def test_synthetic_stand_ins_have_the_official_keys_dtypes_and_shapes(tmp_path, name):
    path = write_synthetic_like(tmp_path, name, n_train=4, n_val=2, n_test=3)
    with np.load(path) as npz:
        assert sorted(npz.files) == sorted(f"{s}_{p}" for s in ("train", "val", "test")
                                           for p in ("images", "labels"))  # fmt: skip
        assert npz["train_images"].dtype == np.uint8 and npz["train_labels"].dtype == np.uint8
        assert npz["test_images"].shape == (3, 28, 28, 28)
        assert npz["test_labels"].shape == (3, 1)
        assert npz["train_labels"].max() < dataset_info(name).n_classes


def test_a_64_cubed_stand_in_is_written_under_the_official_name(tmp_path):
    path = write_synthetic_like(tmp_path, "vesselmnist3d", 64, n_train=2, n_val=2, n_test=2)
    assert path.name == "vesselmnist3d_64.npz"
    with np.load(path) as npz:
        assert npz["val_images"].shape == (2, 64, 64, 64)


def test_volumes_load_as_uint8_channels_last_memory_maps(tmp_path):
    write_synthetic_like(tmp_path, "fracturemnist3d", n_train=6, n_val=3, n_test=3)
    data = _load("fracturemnist3d", data_dir=tmp_path)
    assert data.info.volumetric
    assert data.train.images.shape == (6, 28, 28, 28, 1)
    assert data.train.images.dtype == torch.uint8
    assert data.test.labels.dtype == torch.int64 and data.test.labels.shape == (3,)
    assert not data.official and data.provenance()["split_sizes"] == {"train": 6, "val": 3,
                                                                      "test": 3}  # fmt: skip


def test_a_loaded_volume_is_the_file_s_volume(tmp_path):
    path = write_synthetic_like(tmp_path, "nodulemnist3d", n_train=4, n_val=2, n_test=2)
    data = _load("nodulemnist3d", data_dir=tmp_path)
    with np.load(path) as npz:
        assert np.array_equal(data.val.images[..., 0].numpy(), npz["val_images"])
        assert np.array_equal(data.val.labels.numpy(), npz["val_labels"][:, 0])


def _write(tmp_path, name: str, **overrides) -> None:
    info = dataset_info(name)
    arrays = make_synthetic_splits(task=info.task, n_classes=info.n_classes, n_train=4,
                                   n_val=2, n_test=2, volumetric=True)  # fmt: skip
    arrays.update(overrides)
    np.savez(dataset_path(name, 28, tmp_path), **arrays)


def test_a_64_cubed_file_under_the_28_name_is_refused_with_a_hint(tmp_path):
    write_synthetic_like(tmp_path, "adrenalmnist3d", 64, n_train=2, n_val=2, n_test=2)
    (tmp_path / "adrenalmnist3d_64.npz").rename(tmp_path / "adrenalmnist3d.npz")
    with pytest.raises(MedbenchError, match=r"expected \(N, 28, 28, 28\).*64 px file") as err:
        _load("adrenalmnist3d", data_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_2d_images_for_a_3d_set_are_refused(tmp_path):
    _write(tmp_path, "synapsemnist3d", train_images=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(MedbenchError, match=r"train_images has shape \(4, 28, 28\).*2D images"):
        _load("synapsemnist3d", data_dir=tmp_path)


def test_volumes_with_a_channel_axis_are_refused(tmp_path):
    _write(tmp_path, "organmnist3d", val_images=np.zeros((2, 28, 28, 28, 1), np.uint8))
    with pytest.raises(MedbenchError, match=r"val_images has shape \(2, 28, 28, 28, 1\)"):
        _load("organmnist3d", data_dir=tmp_path)


def test_non_cubic_volumes_are_refused(tmp_path):
    _write(tmp_path, "organmnist3d", test_images=np.zeros((2, 28, 28, 14), np.uint8))
    with pytest.raises(MedbenchError, match=r"expected \(N, 28, 28, 28\) for organmnist3d"):
        _load("organmnist3d", data_dir=tmp_path)


def test_float_volumes_are_refused(tmp_path):
    _write(tmp_path, "vesselmnist3d", train_images=np.zeros((4, 28, 28, 28), np.float32))
    with pytest.raises(MedbenchError, match="train_images has dtype float32, expected uint8"):
        _load("vesselmnist3d", data_dir=tmp_path)


def test_labels_of_the_wrong_shape_are_refused(tmp_path):
    _write(tmp_path, "nodulemnist3d", train_labels=np.zeros((4,), np.uint8))
    with pytest.raises(MedbenchError, match=r"train_labels has shape \(4,\), expected \(4, 1\)"):
        _load("nodulemnist3d", data_dir=tmp_path)


def test_loading_a_3d_set_at_an_unpublished_size_is_refused(tmp_path):
    with pytest.raises(MedbenchError, match="published at 28, 64"):
        _load("organmnist3d", 128, data_dir=tmp_path)
