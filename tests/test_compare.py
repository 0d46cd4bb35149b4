"""medbench.analysis.comparison and `medbench compare` on small run folders written by hand: a
results.json through RunResults and a predictions.npz with chosen logits, no training."""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from medbench.analysis.comparison import compare_runs, load_run
from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.runs.results import ModelInfo, RunResults, Timing
from medbench.scoring import metrics
from medbench.scoring.metrics import MULTI_LABEL
from medbench.training.config import TrainConfig
from medbench.utils.fsutil import atomic_write_json

N_TEST = 400
# How far each model's logits lean towards the truth: "strong" and "twin" are equally good,
# "weak" is clearly worse.
SIGNAL = {"strong": 1.0, "twin": 1.0, "weak": 0.5}


def _labels(task: str, n: int = N_TEST) -> np.ndarray:
    rng = np.random.default_rng(123)
    if task == "multi-class":
        return rng.integers(0, 4, n)
    if task == MULTI_LABEL:
        return (rng.random((n, 3)) < 0.3).astype(int)
    return (rng.random(n) < 0.3).astype(int)  # binary, 30% positive


def _logits(
    task: str, model: str, seed: int, labels: np.ndarray, signal: float | None
) -> np.ndarray:
    """Logits leaning `signal` towards the truth, with an image difficulty every model
    shares (so paired models correlate, as real ones do) and noise of the model and seed."""
    shape = {"multi-class": (len(labels), 4), MULTI_LABEL: labels.shape}.get(task, (len(labels),))
    difficulty = np.random.default_rng(7).normal(0, 1, shape)
    noise = np.random.default_rng(zlib.crc32(f"{model}|{seed}".encode())).normal(0, 1, shape)
    lean = SIGNAL[model] if signal is None else signal
    if task == "multi-class":
        return lean * np.eye(4)[labels] + difficulty + noise
    if task == MULTI_LABEL:
        return lean * (2 * labels - 1) + difficulty + noise - 1.0
    z = lean * (2 * labels - 1) + difficulty + noise
    return np.stack([np.zeros_like(z), z], axis=1)


def write_run(
    folder: Path,
    model: str,
    seed: int = 0,
    *,
    dataset: str = "breastmnist",
    task: str = "binary-class",
    size: int = 28,
    signal: float | None = None,
    lr: float = 1e-3,
    status: str = "finished",
) -> Path:
    """A finished run folder of `model` and `seed`: results.json and predictions.npz."""
    run_dir = folder / f"{dataset}-{model}-{seed}-{lr}"
    run_dir.mkdir(parents=True)
    labels = _labels(task)
    logits = _logits(task, model, seed, labels, signal)
    test = metrics.evaluate(labels, metrics.probabilities_from_logits(logits, task), task)
    stored = labels if task == MULTI_LABEL else labels[:, None]
    np.savez(run_dir / "predictions.npz", test_logits=logits, test_labels=stored,
             val_logits=logits, val_labels=stored, temperature=np.float64(1.3))  # fmt: skip
    config = TrainConfig(dataset=dataset, model=model, seed=seed, size=size, lr=lr)
    results = RunResults(
        run_dir=str(run_dir), config=config.to_dict(),
        dataset={"name": dataset, "size": size, "task": task, "n_classes": logits.shape[1]},
        model=ModelInfo(model, 1000, 10_000), metrics={"val": test, "test": test},
        timing=Timing(1.0), steps=10, steps_per_epoch=10, rounds_planned=1,
        rounds_completed=1, best_round=1, status=status,
    )  # fmt: skip
    atomic_write_json(run_dir / "results.json", results.to_json())
    return run_dir


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A benchmark-like folder: three models x three seeds on one binary dataset."""
    folder = tmp_path_factory.mktemp("grid")
    (folder / "results.sqlite").write_bytes(b"")
    for model in SIGNAL:
        for seed in range(3):
            write_run(folder / "runs", model, seed)
    return folder


@pytest.fixture(scope="module")
def comparison(grid):
    return compare_runs(grid)


def _pair(comparison, a: str, b: str):
    return next(p for p in comparison.pairs if {p.model_a, p.model_b} == {a, b})


def test_a_real_difference_is_significant_after_holm(comparison):
    pair = _pair(comparison, "strong", "weak")
    assert pair.delong_p < 0.01 and pair.delong_p_holm < 0.01
    assert pair.mcnemar_p < 0.01
    assert pair.auc_better == "strong" and pair.acc_better == "strong"


def test_equally_good_models_are_indistinguishable(comparison):
    pair = _pair(comparison, "strong", "twin")
    assert pair.delong_p > 0.2 and pair.mcnemar_p > 0.2
    assert pair.auc_better is None and pair.acc_better is None
    text = comparison.format_table()
    assert "strong vs twin: indistinguishable on this test split by AUC" in text
    assert "cannot be resolved on breastmnist's 400 test images" in text


def test_holm_corrects_over_every_pair(comparison):
    pairs = comparison.pairs
    assert len(pairs) == 3 and [p.seeds for p in pairs] == [[0, 1, 2]] * 3
    order = np.argsort([p.delong_p for p in pairs])
    assert pairs[order[0]].delong_p_holm == pytest.approx(min(1, 3 * pairs[order[0]].delong_p))
    assert all(p.delong_p_holm >= p.delong_p and p.mcnemar_p_holm >= p.mcnemar_p for p in pairs)


def test_the_header_states_the_split_the_methods_and_the_resolvable_differences(comparison):
    h = comparison.header
    assert (h["dataset"], h["size"], h["task"], h["n_test"], h["n_runs"]) == (
        "breastmnist", 28, "binary-class", N_TEST, 9,
    )  # fmt: skip
    assert h["models"]["weak"]["seeds"] == [0, 1, 2]
    r = h["resolvable"]
    assert 0.5 < r["base_auc"] < 1 and -1 <= r["auc_correlation"] <= 1
    assert 0 < r["auc"] < 0.2 and 0 < r["acc"] < 0.2 and 0 < r["discordance"] < 1
    assert "DeLong" in h["methods"]["auc"] and "McNemar" in h["methods"]["acc"]


def test_per_seed_numbers_are_each_run_s_reported_ones(grid, comparison):
    pair = _pair(comparison, "strong", "weak")
    run = load_run(grid / "runs" / "breastmnist-strong-0-0.001")
    reported = json.loads((run.run_dir / "results.json").read_text())["metrics"]["test"]
    row = pair.per_seed[0]
    side = "a" if pair.model_a == "strong" else "b"
    assert row["seed"] == 0 and row[f"auc_{side}"] == pytest.approx(reported["auc"])
    assert row[f"acc_{side}"] == pytest.approx(reported["acc"])
    assert row["delong_p"] is not None and row["mcnemar_p"] is not None


def test_runs_are_matched_by_seed(tmp_path):
    for seed in (0, 1, 2):
        write_run(tmp_path, "strong", seed)
    for seed in (1, 2, 3):
        write_run(tmp_path, "weak", seed)
    (pair,) = compare_runs(tmp_path).pairs
    assert pair.seeds == [1, 2] and (pair.n_runs_a, pair.n_runs_b) == (3, 3)
    assert [row["seed"] for row in pair.per_seed] == [1, 2]


def test_one_model_with_two_configs_is_two_labelled_groups(tmp_path):
    write_run(tmp_path, "strong", lr=1e-3)
    write_run(tmp_path, "strong", lr=1e-2, signal=0.4)
    (pair,) = compare_runs(tmp_path).pairs
    assert pair.model_a.startswith("strong@") and pair.model_b.startswith("strong@")
    assert pair.model_a != pair.model_b


def test_multi_class_auc_is_tested_by_a_paired_bootstrap(tmp_path):
    for model in ("strong", "weak"):
        write_run(tmp_path, model, dataset="octmnist", task="multi-class")
    (pair,) = compare_runs(tmp_path, n_boot=300).pairs
    assert "paired bootstrap" in pair.delong_method and pair.delong_p < 0.01
    assert "McNemar" in pair.mcnemar_method and pair.per_seed[0]["delong_p"] is None


def test_multi_label_accuracy_is_tested_by_a_paired_bootstrap(tmp_path):
    for model in ("strong", "weak"):
        write_run(tmp_path, model, dataset="chestmnist", task=MULTI_LABEL)
    comparison = compare_runs(tmp_path, n_boot=300)
    (pair,) = comparison.pairs
    assert "paired bootstrap" in pair.delong_method and "paired bootstrap" in pair.mcnemar_method
    assert pair.delong_p < 0.01 and pair.a_only_right is None
    assert comparison.header["resolvable"]["acc"] is None
    assert comparison.header["resolvable"]["auc"] > 0
    assert "ACC not computed (multi-label)" in comparison.format_table()


def test_a_run_without_logits_is_read_from_its_saved_probabilities(tmp_path):
    run_dir = write_run(tmp_path, "strong")
    with np.load(run_dir / "predictions.npz") as npz:
        labels, logits = npz["test_labels"], npz["test_logits"]
    probs = metrics.probabilities_from_logits(logits, "binary-class")
    np.savez(run_dir / "predictions.npz", test_labels=labels, test_probs=probs)
    run = load_run(run_dir)
    assert run.probs == pytest.approx(probs) and run.labels.shape == (N_TEST,)


def test_unfinished_runs_inside_a_grid_are_skipped_and_listed(tmp_path):
    write_run(tmp_path, "strong")
    write_run(tmp_path, "weak")
    write_run(tmp_path, "twin", status="failed")
    comparison = compare_runs(tmp_path)
    assert len(comparison.pairs) == 1
    assert len(comparison.header["skipped"]) == 1 and "twin" in comparison.header["skipped"][0]


def test_runs_of_two_datasets_are_refused(tmp_path):
    a = write_run(tmp_path, "strong")
    b = write_run(tmp_path, "weak", dataset="pneumoniamnist")
    with pytest.raises(MedbenchError, match="compare runs of one dataset and size"):
        compare_runs(a, b)


def test_runs_of_one_model_are_refused(tmp_path):
    write_run(tmp_path, "strong", 0)
    write_run(tmp_path, "strong", 1)
    with pytest.raises(MedbenchError, match="at least two models; found only strong"):
        compare_runs(tmp_path)


def test_json_replaces_undefined_numbers_with_null(comparison):
    text = json.dumps(comparison.to_json(), allow_nan=False)
    assert json.loads(text)["pairs"][0]["model_a"]


# ----------------------------------------------------------------------------- CLI


def test_cli_json_has_one_record_per_pair_with_raw_and_holm_p(grid, capsys):
    assert main(["compare", str(grid), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["pairs"]) == 3 and out["header"]["dataset"] == "breastmnist"
    for record in out["pairs"]:
        for key in ("delong_p", "mcnemar_p", "delong_p_holm", "mcnemar_p_holm"):
            assert 0 <= record[key] <= 1 and not math.isnan(record[key])


def test_cli_prints_the_table(grid, capsys):
    assert main(["compare", str(grid / "runs")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("breastmnist (28px, binary-class, 400 test images): 3 models, 9 runs")
    assert "Resolvable at 80% power" in out


def test_cli_refuses_a_missing_path_with_one_line_and_exit_2(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medbench: error: ")
    assert "not a run folder" in err


def test_a_benchmark_folder_with_its_report_is_searched_for_runs(tmp_path, grid):
    folder = tmp_path / "grid"
    shutil.copytree(grid, folder)
    (folder / "results.json").write_text('[{"model": "a report row, not a run"}]')
    assert [p.model_a for p in compare_runs(folder).pairs] == [
        p.model_a for p in compare_runs(grid).pairs
    ]
