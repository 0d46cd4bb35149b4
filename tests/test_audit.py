"""`medbench audit`: planted exact and near duplicates are found exactly, with their label
conflicts, and a clean synthetic set has none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medbench.cli import main
from medbench.data.audit import audit_dataset
from medbench.data.synthetic import write_synthetic_like


def _clean(folder: Path, name: str = "breastmnist", size: int = 28) -> Path:
    return write_synthetic_like(folder, name, size, n_train=200, n_val=50, n_test=60, seed=3)


def _planted(folder: Path) -> Path:
    """A clean set with, planted: two exact copies (train->train with its label,
    train->test with the other label), and two near copies (train + noise of at most 3 grey levels -> test, train
    brighter by 6 grey levels -> val, both with the other label)."""
    path = _clean(folder)
    arrays = dict(np.load(path))
    train, val, test = arrays["train_images"], arrays["val_images"], arrays["test_images"]
    rng = np.random.default_rng(0)
    train[20] = train[10]
    arrays["train_labels"][20] = arrays["train_labels"][10]  # a copy with its label
    test[7] = train[5]
    arrays["test_labels"][7] = 1 - arrays["train_labels"][5]
    noise = rng.integers(-3, 4, size=train[30].shape)
    test[3] = np.clip(train[30].astype(int) + noise, 0, 255).astype(np.uint8)
    arrays["test_labels"][3] = 1 - arrays["train_labels"][30]
    val[4] = np.clip(train[40].astype(int) + 6, 0, 255).astype(np.uint8)
    arrays["val_labels"][4] = 1 - arrays["train_labels"][40]
    np.savez_compressed(path, **arrays)
    return path


def test_a_clean_set_has_no_duplicates(tmp_path):
    _clean(tmp_path)
    result = audit_dataset("breastmnist", data_dir=tmp_path, download=False)
    assert set(result.counts.values()) == {0}
    assert result.examples == []


def test_planted_duplicates_are_found_exactly_with_their_label_conflicts(tmp_path):
    _planted(tmp_path)
    result = audit_dataset("breastmnist", data_dir=tmp_path, download=False)
    assert result.counts == {
        "exact_within_split_duplicates": 1,
        "exact_cross_split_duplicates": 1,
        "near_within_split_duplicates": 0,
        "near_cross_split_duplicates": 2,
        "label_conflicts": 3,
        "cross_split_label_conflicts": 3,
        "test_images_with_a_train_or_val_duplicate": 2,
    }
    found = {(e["kind"], tuple(e["a"]), tuple(e["b"])) for e in result.examples}
    assert found == {
        ("exact", ("train", 10), ("train", 20)),
        ("exact", ("train", 5), ("test", 7)),
        ("near", ("train", 30), ("test", 3)),
        ("near", ("train", 40), ("val", 4)),
    }
    assert result.by_splits["train-test"] == {"exact": 1, "near": 1}
    assert result.by_splits["train-val"] == {"exact": 0, "near": 1}


def test_class_balance_counts_each_split(tmp_path):
    path = _clean(tmp_path)
    arrays = np.load(path)
    result = audit_dataset("breastmnist", data_dir=tmp_path, download=False)
    for split in ("train", "val", "test"):
        counts = np.bincount(arrays[f"{split}_labels"][:, 0], minlength=2)
        assert list(result.class_balance[split].values()) == counts.tolist()


@pytest.mark.parametrize("name,size", [("dermamnist", 28), ("breastmnist", 64), ("chestmnist", 28)])
def test_colour_large_and_multi_label_sets_are_audited(tmp_path, name, size):
    path = _clean(tmp_path, name, size)
    arrays = dict(np.load(path))
    arrays["test_images"][0] = arrays["train_images"][0]
    np.savez_compressed(path, **arrays)
    result = audit_dataset(name, size, data_dir=tmp_path, download=False)
    assert result.counts["exact_cross_split_duplicates"] == 1
    assert result.counts["near_cross_split_duplicates"] == 0


def test_the_command_prints_json_counts_and_refuses_a_bad_threshold(tmp_path, capsys):
    _planted(tmp_path)
    assert main(["audit", "breastmnist", "--data-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["exact_cross_split_duplicates"] == 1
    assert main(["audit", "breastmnist", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "2 of 60 test images have a duplicate in train or val" in text
    assert "pairs with train: 1 exact, 1 near" in text
    assert main(["audit", "breastmnist", "--data-dir", str(tmp_path), "--threshold", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "threshold" in err[0]


def test_out_writes_the_audit_and_a_picture_of_the_pairs(tmp_path, capsys):
    _planted(tmp_path / "data")
    out = tmp_path / "audit"
    assert (
        main(["audit", "breastmnist", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    )
    assert (
        json.loads((out / "audit.json").read_text())["counts"]["near_cross_split_duplicates"] == 2
    )
    assert "near duplicates" in (out / "audit.txt").read_text()
    assert (out / "duplicates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_leakage_counts_the_test_images_with_a_copy_in_train_or_val(tmp_path):
    from medbench.data import load_dataset
    from medbench.data.audit import test_leakage

    _planted(tmp_path)
    data = load_dataset("breastmnist", data_dir=tmp_path, download=False, progress=False)
    found = test_leakage(data)
    assert (found.n_test, found.leaked, found.conflicting) == (60, 2, 2)
    _clean(tmp_path / "clean")
    clean = load_dataset("breastmnist", data_dir=tmp_path / "clean", download=False, progress=False)
    assert test_leakage(clean).leaked == 0


def test_the_report_names_test_images_that_leak(tmp_path):
    """A grid's report audits the data file its runs recorded (when it is still there,
    unchanged) and names the leak."""
    from medbench.data.arrays import file_md5
    from medbench.report import build_report
    from support.fake_training import make_fake_train
    from support.grids import run_benchmark_with

    path = _planted(tmp_path / "data")
    run_benchmark_with(datasets="breastmnist", models="advanced_cnn,resnet18", seeds=1, epochs=2,
                  out=tmp_path / "grid", progress=False, report=False,
                  train_fn=make_fake_train())  # fmt: skip
    for results in (tmp_path / "grid").rglob("results.json"):
        d = json.loads(results.read_text())
        d["dataset"].update(file=str(path), md5=file_md5(path))
        results.write_text(json.dumps(d))
    report = build_report(tmp_path / "grid", plots=False)
    assert any(
        s.startswith("breastmnist: 2 of 60 test images have an exact or near copy")
        and "2 with another label" in s
        for s in report.findings.findings
    )
