"""Loading npz files into tensors: shapes, labels, validation, MD5 policy and the array cache."""

from __future__ import annotations

import json
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch

from medbench.cli import main
from medbench.data import dataset_path, load_dataset
from medbench.data.arrays import file_md5, open_npz
from medbench.data.synthetic import make_synthetic_splits, write_synthetic_like
from medbench.data.validate import KEYS
from medbench.errors import MedbenchError, MedbenchWarning


def _load(name: str, size: int = 28, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedbenchWarning)
        return load_dataset(name, size, download=False, **kwargs)


def _write_npz(data_dir, name: str, arrays: dict, size: int = 28) -> None:
    np.savez(dataset_path(name, size, data_dir), **arrays)


def _splits_like(name: str, **overrides) -> dict:
    from medbench.data import dataset_info

    info = dataset_info(name)
    arrays = make_synthetic_splits(task=info.task, n_classes=info.n_classes,
                                   n_channels=info.n_channels, n_train=8, n_val=4, n_test=4)  # fmt: skip
    arrays.update(overrides)
    return arrays


@pytest.mark.parametrize(
    ("name", "size", "channels"),
    [
        ("bloodmnist", 28, 3),
        ("breastmnist", 28, 1),
        ("dermamnist", 64, 3),
        ("pneumoniamnist", 64, 1),
    ],
)
def test_images_are_uint8_nhwc_for_gray_and_rgb(synthetic_data_dir, name, size, channels):
    data = _load(name, size)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (size, size, channels)
    assert (len(data.train), len(data.val), len(data.test)) == (64, 16, 16)


def test_single_label_tasks_give_int64_class_indices(synthetic_data_dir):
    data = _load("bloodmnist")
    assert data.train.labels.dtype == torch.int64 and data.train.labels.shape == (64,)
    assert set(data.train.labels.tolist()) == set(range(8))


def test_ordinal_labels_stay_in_their_range(synthetic_data_dir):
    labels = _load("retinamnist").train.labels
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() == 4


def test_multilabel_targets_are_float_rows(synthetic_data_dir):
    labels = _load("chestmnist").train.labels
    assert labels.dtype == torch.float32 and labels.shape == (64, 14)
    assert set(labels.unique().tolist()) <= {0.0, 1.0}


def test_labels_match_the_file(synthetic_data_dir):
    with np.load(synthetic_data_dir / "bloodmnist.npz") as npz:
        expected_images, expected_labels = npz["test_images"], npz["test_labels"]
    data = _load("bloodmnist")
    assert np.array_equal(data.test.images.numpy(), expected_images)
    assert data.test.labels.tolist() == expected_labels[:, 0].tolist()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_images_are_a_memory_map_of_the_cache_not_a_copy(synthetic_data_dir):
    images = _load("breastmnist").train.images  # gray: (N, H, W) file viewed as (N, H, W, 1)
    address = images.data_ptr()
    with open("/proc/self/maps") as maps:
        mapped = [line.split()[0] for line in maps if line.rstrip().endswith("train_images.npy")]
    ranges = [tuple(int(x, 16) for x in span.split("-")) for span in mapped]
    assert any(start <= address < end for start, end in ranges)
    assert images.shape[-1] == 1 and images.is_contiguous()


def test_writing_to_images_never_changes_the_cache(synthetic_data_dir):
    data = _load("breastmnist")
    before = data.train.images[0].clone()
    data.train.images[0] = 0
    assert torch.equal(_load("breastmnist").train.images[0], before)


def test_stand_in_file_loads_with_a_split_size_warning(synthetic_data_dir):
    with pytest.warns(MedbenchWarning, match="split sizes train/val/test 64/16/16 differ") as rec:
        data = load_dataset("bloodmnist", download=False)
    assert len(rec) == 1
    assert data.official is False and data.md5_matches is False
    assert data.warnings == [str(rec[0].message)] and "\n" not in data.warnings[0]


def test_provenance_is_json_and_says_what_was_loaded(synthetic_data_dir):
    prov = _load("dermamnist", 64).provenance()
    assert json.loads(json.dumps(prov)) == prov
    assert prov["name"] == "dermamnist" and prov["size"] == 64 and prov["n_classes"] == 7
    assert prov["split_sizes"] == {"train": 64, "val": 16, "test": 16}
    assert prov["license"] == "CC BY-NC 4.0" and prov["official"] is False
    assert prov["file"].endswith("dermamnist_64.npz") and len(prov["md5"]) == 32


def test_split_by_name(synthetic_data_dir):
    data = _load("breastmnist")
    assert data.split("val") is data.val
    with pytest.raises(MedbenchError, match="unknown split"):
        data.split("dev")


def test_missing_file_without_download_says_how_to_get_it(isolated_medbench_dirs):
    with pytest.raises(MedbenchError, match="medbench download bloodmnist --size 64"):
        load_dataset("bloodmnist", 64, download=False)


# --- structural problems are errors naming the file -------------------------------------


def test_missing_key_is_an_error(tmp_path):
    arrays = _splits_like("breastmnist")
    del arrays["val_labels"]
    _write_npz(tmp_path, "breastmnist", arrays)
    with pytest.raises(MedbenchError, match=r"breastmnist.npz: has no val_labels"):
        _load("breastmnist", data_dir=tmp_path)


def test_float_images_are_an_error(tmp_path):
    arrays = _splits_like("breastmnist")
    arrays["train_images"] = arrays["train_images"].astype(np.float32)
    _write_npz(tmp_path, "breastmnist", arrays)
    with pytest.raises(MedbenchError, match="train_images has dtype float32, expected uint8"):
        _load("breastmnist", data_dir=tmp_path)


def test_wrong_image_size_is_an_error_with_a_hint(tmp_path):
    write_synthetic_like(tmp_path, "breastmnist", 64)
    os.replace(tmp_path / "breastmnist_64.npz", tmp_path / "breastmnist.npz")
    with pytest.raises(MedbenchError, match=r"expected \(N, 28, 28\).*64 px file"):
        _load("breastmnist", data_dir=tmp_path)


def test_rgb_images_for_a_gray_dataset_are_an_error(tmp_path):
    arrays = _splits_like("bloodmnist")  # RGB
    _write_npz(tmp_path, "breastmnist", {k: v for k, v in arrays.items()})
    with pytest.raises(MedbenchError, match="breastmnist.npz: train_images has shape"):
        _load("breastmnist", data_dir=tmp_path)


def test_label_out_of_range_is_an_error(tmp_path):
    arrays = _splits_like("retinamnist")
    arrays["test_labels"][0, 0] = 5
    _write_npz(tmp_path, "retinamnist", arrays)
    with pytest.raises(MedbenchError, match=r"test_labels has values 0..5, expected 0..4"):
        _load("retinamnist", data_dir=tmp_path)


def test_single_column_labels_for_chestmnist_are_an_error(tmp_path):
    arrays = _splits_like("chestmnist", train_labels=np.zeros((8, 1), np.uint8))
    _write_npz(tmp_path, "chestmnist", arrays)
    with pytest.raises(MedbenchError, match=r"train_labels has shape \(8, 1\), expected \(8, 14\)"):
        _load("chestmnist", data_dir=tmp_path)


def test_file_that_is_not_a_zip_is_an_error(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"<html>not found</html>")
    with pytest.raises(MedbenchError, match="breastmnist.npz is not a readable npz") as err:
        _load("breastmnist", data_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_truncated_file_is_an_error(tmp_path):
    body = write_synthetic_like(tmp_path, "breastmnist").read_bytes()
    (tmp_path / "breastmnist.npz").write_bytes(body[: len(body) // 2])
    with pytest.raises(MedbenchError, match="not a readable npz"):
        _load("breastmnist", data_dir=tmp_path)


def test_corrupt_member_data_is_an_error(tmp_path):
    path = write_synthetic_like(tmp_path, "breastmnist")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("train_images.npy")
    body = bytearray(path.read_bytes())
    middle = info.header_offset + 100 + info.compress_size // 2
    body[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(body))
    with pytest.raises(MedbenchError, match="not a readable npz"):
        _load("breastmnist", data_dir=tmp_path)


# --- the array cache --------------------------------------------------------------------


def test_md5_is_computed_once_per_file_version(synthetic_data_dir):
    calls = []

    def counting_md5(path):
        calls.append(path)
        return file_md5(path)

    path = synthetic_data_dir / "breastmnist.npz"
    _, first = open_npz(path, KEYS, md5=counting_md5)
    _, again = open_npz(path, KEYS, md5=counting_md5)
    assert len(calls) == 1 and again == first == file_md5(path)
    write_synthetic_like(synthetic_data_dir, "breastmnist", seed=1)
    os.utime(path, ns=(1, 1))  # a new mtime (and the same size) must still be noticed
    arrays, md5 = open_npz(path, KEYS, md5=counting_md5)
    assert len(calls) == 2 and md5 != first
    with np.load(path) as npz:
        assert np.array_equal(arrays["train_images"], npz["train_images"])


def test_load_dataset_reads_the_md5_from_the_cache(synthetic_data_dir):
    path = synthetic_data_dir / "breastmnist.npz"
    open_npz(path, KEYS, md5=lambda p: "0" * 32)  # what the cache holds is what is reported
    assert _load("breastmnist").md5 == "0" * 32


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_an_edited_cached_array_is_unpacked_again_with_a_warning(synthetic_data_dir, keep_mtime):
    path = synthetic_data_dir / "breastmnist.npz"
    open_npz(path, KEYS)
    cached = synthetic_data_dir / ".medbench-cache" / "breastmnist" / "test_labels.npy"
    st = cached.stat()
    with open(cached, "r+b") as fh:  # flip the last label in place: same size
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([1 - last[0]]))
    if keep_mtime:
        os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.warns(MedbenchWarning, match="test_labels.npy .* is not what was unpacked"):
        arrays, md5 = open_npz(path, KEYS)
    with np.load(path) as npz:
        assert np.array_equal(arrays["test_labels"], npz["test_labels"])
    assert md5 == file_md5(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedbenchWarning)  # unpacked again: trusted again
        open_npz(path, KEYS)


def test_cache_lives_beside_a_writable_data_folder(synthetic_data_dir):
    _load("breastmnist")
    assert (synthetic_data_dir / ".medbench-cache" / "breastmnist" / "train_images.npy").is_file()


def test_cache_moves_to_the_user_cache_when_the_data_folder_is_read_only(tmp_path, monkeypatch):
    data_dir = tmp_path / "ro"
    write_synthetic_like(data_dir, "breastmnist")
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    data_dir.chmod(0o555)
    try:
        _load("breastmnist", data_dir=data_dir)
    finally:
        data_dir.chmod(0o755)
    assert not (data_dir / ".medbench-cache").exists()
    assert list((tmp_path / "cache" / "arrays").glob("breastmnist-*/train_images.npy"))


def test_cli_error_for_missing_data_exits_2(capsys):
    assert main(["download", "nosuchset"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --- real data (../shared/medmnist) -----------------------------------------------------


@pytest.mark.realdata
def test_real_breastmnist_is_official(shared_medmnist, recwarn):
    data = load_dataset("breastmnist", data_dir=shared_medmnist, download=False)
    assert data.official and data.md5_matches and data.warnings == []
    assert [len(data.train), len(data.val), len(data.test)] == [546, 78, 156]
    assert not [w for w in recwarn if issubclass(w.category, MedbenchWarning)]


@pytest.mark.realdata
def test_real_pneumoniamnist_loads_with_an_md5_warning(shared_medmnist):
    with pytest.warns(MedbenchWarning, match="MD5 .* differs from the official"):
        data = load_dataset("pneumoniamnist", data_dir=shared_medmnist, download=False)
    assert not data.official and data.md5 == "1778dfcd3efbf972ff368d48ec894aae"
    assert data.provenance()["split_sizes"] == {"train": 4708, "val": 524, "test": 624}
    assert data.train.images.shape == (4708, 28, 28, 1)


def test_a_missing_data_dir_is_refused_and_not_created(tmp_path):
    missing = tmp_path / "shared" / "medmnist"
    with pytest.raises(MedbenchError, match="does not exist .*medbench download"):
        load_dataset("breastmnist", data_dir=missing)
    assert not missing.exists() and not missing.parent.exists()


def test_a_missing_data_dir_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    argv = ["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--epochs", "1"]
    assert main([*argv, "--data-dir", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err and "does not exist" in err
    assert not (tmp_path / "typo").exists()
