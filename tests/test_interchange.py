"""`medbench evaluate RUN --format medmnist --out DIR`: medmnist's official result files,
named as its Evaluator names them, that its parser reads back to the run's numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from medmnist import Evaluator
from medmnist.evaluator import Metrics

from medbench.analysis.official_files import (
    official_csv,
    official_filename,
    run_tag,
    write_official_predictions,
)
from medbench.cli import main
from medbench.data.synthetic import write_synthetic_like
from medbench.scoring import metrics

FIXTURES = Path(__file__).parent / "fixtures"
TINY_NET = """
from torch import nn


def build(in_channels, num_classes, image_size=28):
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, num_classes),
    )
"""


def _hand_made_run(folder: Path, data_dir: Path, seed: int = 0) -> Path:
    """A bloodmnist run folder (results.json of the v1 fixture) whose predictions.npz holds
    random logits for the labels of a synthetic bloodmnist.npz in `data_dir`."""
    npz = write_synthetic_like(data_dir, "bloodmnist", 28, n_val=32, n_test=32)
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "results_v1.json", folder / "results.json")
    rng = np.random.default_rng(seed)
    with np.load(npz) as data:
        arrays = {
            f"{s}_{kind}": (rng.normal(size=(32, 8)) if kind == "logits" else data[f"{s}_labels"])
            for s in ("val", "test")
            for kind in ("logits", "labels")
        }
    np.savez(folder / "predictions.npz", **arrays)
    return folder


def _read_back(path: Path) -> np.ndarray:
    """What `Evaluator.parse_and_evaluate` reads: the index column, then the scores."""
    return pd.read_csv(path, index_col=0, header=None).sort_index().values


def test_file_names_are_the_ones_medmnists_evaluator_gives(tmp_path):
    write_synthetic_like(tmp_path, "breastmnist", 28)
    write_synthetic_like(tmp_path, "breastmnist", 64)
    for size in (28, 64):
        evaluator = Evaluator("breastmnist", "test", size=size, root=str(tmp_path))
        named = evaluator.get_standard_evaluation_filename(Metrics(0.91234, 0.8), "seed0-ab12")
        assert official_filename("breastmnist", size, "test", 0.91234, 0.8, "seed0-ab12") == named
    assert official_filename("breastmnist", 28, "val", 0.5, 0.25, "r") == (
        "breastmnist_val_[AUC]0.500_[ACC]0.250@r.csv"
    )


def test_the_run_tag_keeps_only_what_the_parser_reads_back():
    assert run_tag("runs/seed0-1a2b3c4d") == "seed0-1a2b3c4d"
    assert run_tag("runs/my_net:build.v2") == "my-net-build-v2"


def test_scores_are_written_exactly_one_row_per_image(tmp_path):
    scores = np.random.default_rng(1).random((5, 3))
    path = tmp_path / "x.csv"
    path.write_text(official_csv(scores))
    assert np.array_equal(_read_back(path), scores)
    assert path.read_text().splitlines()[0].startswith("0,")  # no header


def test_each_split_parses_back_to_the_metrics_in_its_name(tmp_path):
    run = _hand_made_run(tmp_path / "run", tmp_path / "data")
    files = write_official_predictions(run, tmp_path / "out")
    assert [f.split for f in files] == ["val", "test"]
    arrays = np.load(run / "predictions.npz")
    for f in files:
        scores = metrics.probabilities_from_logits(arrays[f"{f.split}_logits"], "multi-class")
        ours = metrics.evaluate(arrays[f"{f.split}_labels"], scores, "multi-class")
        evaluator = Evaluator("bloodmnist", f.split, size=28, root=str(tmp_path / "data"))
        official = evaluator.evaluate(_read_back(Path(f.path)))
        assert official.AUC == pytest.approx(ours["auc"], abs=1e-12) == f.auc
        assert official.ACC == pytest.approx(ours["acc"], abs=1e-12) == f.acc
        assert Path(f.path).name == evaluator.get_standard_evaluation_filename(official, "run")


def test_writing_again_replaces_the_runs_earlier_files(tmp_path):
    run = _hand_made_run(tmp_path / "run", tmp_path / "data")
    write_official_predictions(run, tmp_path / "out")
    other = _hand_made_run(tmp_path / "other" / "run", tmp_path / "data2", seed=5)
    shutil.copy(other / "predictions.npz", run / "predictions.npz")  # retrained weights
    files = write_official_predictions(run, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        Path(f.path).name for f in files
    )


def test_format_without_out_is_one_line_and_exit_2(tmp_path, capsys):
    run = _hand_made_run(tmp_path / "run", tmp_path / "data")
    assert main(["evaluate", str(run), "--format", "medmnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--format medmnist and --out DIR go together" in err and "\n" not in err


def test_a_run_without_predictions_is_one_line(tmp_path, capsys):
    run = _hand_made_run(tmp_path / "run", tmp_path / "data")
    (run / "predictions.npz").unlink()
    assert main(["evaluate", str(run), "--format", "medmnist", "--out", str(tmp_path)]) == 2
    assert "predictions.npz" in capsys.readouterr().err


def _train(tmp_path: Path, dataset: str, size: int) -> Path:
    net = tmp_path / "tiny.py"
    net.write_text(TINY_NET)
    data, run = tmp_path / "data", tmp_path / f"{dataset}-{size}"
    write_synthetic_like(data, dataset, size, n_val=32, n_test=32)
    argv = ["train", "--dataset", dataset, "--size", str(size), "--model", f"{net}:build"]
    argv += ["--epochs", "1", "--data-dir", str(data), "--run-dir", str(run), "--device", "cpu"]
    assert main(argv) == 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "size"), [("breastmnist", 28), ("bloodmnist", 28), ("pneumoniamnist", 64)]
)
def test_official_parser_gives_back_the_runs_results(tmp_path, dataset, size, capsys):
    run = _train(tmp_path, dataset, size)
    out = tmp_path / "official"
    assert main(["evaluate", str(run), "--format", "medmnist", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 2
    # parse_and_evaluate reads the dataset from medmnist's default root, ~/.medmnist.
    home = tmp_path / "home"
    (home / ".medmnist").mkdir(parents=True)
    for npz in (tmp_path / "data").glob("*.npz"):
        shutil.copy(npz, home / ".medmnist" / npz.name)
    code = (
        "import json, sys\nfrom medmnist import Evaluator\n"
        "print(json.dumps([list(Evaluator.parse_and_evaluate(p)) for p in sys.argv[1:]]))"
    )
    paths = sorted(str(p) for p in out.glob("*.csv"))
    proc = subprocess.run(
        [sys.executable, "-c", code, *paths],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    results = json.loads((run / "results.json").read_text())["metrics"]
    for path, (auc, acc) in zip(paths, parsed, strict=True):
        split = "test" if "_test_" in Path(path).name else "val"
        assert auc == pytest.approx(results[split]["auc"], abs=1e-12)
        assert acc == pytest.approx(results[split]["acc"], abs=1e-12)
        size_part = "" if size == 28 else f"_{size}"
        assert Path(path).name.startswith(f"{dataset}{size_part}_{split}_[AUC]")
