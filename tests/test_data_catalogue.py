"""The catalogue, file locations and the `medbench datasets` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from medmnist.info import DEFAULT_ROOT, INFO

from medbench.cli import main
from medbench.data import (
    SIZES,
    dataset_info,
    dataset_path,
    list_datasets,
    resolve_data_dir,
)
from medbench.errors import MedbenchError

TWO_D = ["pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
         "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"]  # fmt: skip


def test_catalogue_lists_the_twelve_2d_datasets_in_order():
    assert [info.name for info in list_datasets()] == TWO_D
    assert SIZES == (28, 64, 128, 224)


def test_catalogue_entries_come_from_medmnist_info():
    info = dataset_info("dermamnist")
    assert info.url(64) == INFO["dermamnist"]["url_64"]
    assert info.md5(28) == INFO["dermamnist"]["MD5"]
    assert info.md5(224) == INFO["dermamnist"]["MD5_224"]
    assert info.n_samples == INFO["dermamnist"]["n_samples"]
    assert (info.n_classes, info.n_channels, info.task) == (7, 3, "multi-class")
    assert info.license == "CC BY-NC 4.0"


def test_label_names_are_in_class_index_order():
    names = dataset_info("organamnist").label_names
    assert names == [INFO["organamnist"]["label"][str(i)] for i in range(11)]


def test_only_chestmnist_is_multilabel():
    assert [i.name for i in list_datasets() if i.is_multilabel] == ["chestmnist"]
    assert dataset_info("chestmnist").n_classes == 14


def test_file_names_follow_the_official_scheme():
    assert dataset_info("dermamnist").file_name(28) == "dermamnist.npz"
    assert dataset_info("dermamnist").file_name(64) == "dermamnist_64.npz"


def test_names_are_case_insensitive():
    assert dataset_info("DermaMNIST").name == "dermamnist"


def test_unknown_name_suggests_close_ones():
    with pytest.raises(MedbenchError, match="did you mean dermamnist"):
        dataset_info("dermamnst")


def test_the_3d_datasets_are_listed_apart_from_the_2d_ones():
    assert [info.name for info in list_datasets(volumetric=True)] == [
        "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d",
        "synapsemnist3d",
    ]  # fmt: skip
    assert [info.name for info in list_datasets(volumetric=None)][:12] == TWO_D
    assert not any(info.volumetric for info in list_datasets())


@pytest.mark.parametrize("size", [32, 0, "28", 28.0])
def test_unsupported_size_is_a_user_error(size):
    with pytest.raises(MedbenchError, match="28, 64, 128, 224"):
        dataset_info("bloodmnist").file_name(size)


def test_data_dir_argument_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"


def test_default_data_dir_is_medmnists(monkeypatch):
    monkeypatch.delenv("MEDBENCH_DATA_DIR")
    assert resolve_data_dir() == Path(DEFAULT_ROOT)


def test_dataset_path_uses_the_official_file_name(tmp_path):
    assert dataset_path("octmnist", 224, tmp_path) == tmp_path / "octmnist_224.npz"


def test_datasets_command_shows_local_sizes(synthetic_data_dir, capsys):
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert rows["dermamnist"]["local_sizes"] == [64]
    assert rows["bloodmnist"]["local_sizes"] == [28]
    assert rows["octmnist"]["local_sizes"] == []
    assert rows["dermamnist"]["license"] == "CC BY-NC 4.0"


def test_datasets_command_prints_a_table(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "organsmnist" in out and "13932/2452/8827" in out and str(tmp_path) in out


def test_datasets_command_lists_the_3d_sets_with_their_sizes_and_shape(tmp_path, capsys):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path, "organmnist3d", 64, n_train=4, n_val=2, n_test=2)
    assert main(["datasets", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert len(rows) == 18
    organ = rows["organmnist3d"]
    assert (organ["spatial_dims"], organ["sizes"], organ["image_shape"]) == (
        3,
        [28, 64],
        [28, 28, 28],
    )
    assert organ["local_sizes"] == [64]
    assert rows["dermamnist"]["spatial_dims"] == 2
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "organmnist3d     3D" in out and "6 3D datasets at 28, 64 voxels a side" in out
