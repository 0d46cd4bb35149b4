"""MODEL_CARD.md of a finished run: data, license, metrics with intervals, limits, use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.runs.results import read_results
from medbench.scoring import metrics
from medbench.training.modelcard import render_model_card, write_model_card

RESULTS_V1 = Path(__file__).parent / "fixtures" / "results_v1.json"


@pytest.fixture(scope="module")
def run_dir(tiny_runs, tmp_path_factory) -> Path:
    """A copy of one real (tiny, one-epoch) training run on a synthetic BreastMNIST stand-in
    (the card is written into it)."""
    return Path(shutil.copytree(tiny_runs.runs[0], tmp_path_factory.mktemp("card") / "run"))


@pytest.fixture(scope="module")
def card(run_dir) -> str:
    return write_model_card(run_dir).read_text()


def load_run(run_dir: Path) -> tuple[dict, dict]:
    results = json.loads((run_dir / "results.json").read_text())
    with np.load(run_dir / "predictions.npz") as npz:
        return results, {k: npz[k] for k in npz.files}


@pytest.mark.slow
def test_card_is_written_into_the_run_folder(run_dir, card):
    assert (run_dir / "MODEL_CARD.md").read_text() == card
    assert card.startswith("# Model card: advanced_cnn on breastmnist (28x28)")


@pytest.mark.slow
def test_card_states_license_and_that_the_file_is_not_official(card):
    assert "License: CC BY 4.0" in card
    assert "NOT the official file" in card


@pytest.mark.slow
def test_card_gives_test_acc_and_auc_with_bootstrap_intervals(run_dir, card):
    results, arrays = load_run(run_dir)
    probs = metrics.probabilities_from_logits(arrays["test_logits"], "binary-class")
    low, high = metrics.bootstrap_ci(arrays["test_labels"], probs, "binary-class", "acc", seed=0)
    acc = results["metrics"]["test"]["acc"]
    assert f"| test | {acc:.3f} (95% CI {low:.3f}-{high:.3f}) |" in card


@pytest.mark.slow
def test_card_gives_ece_before_and_after_temperature_scaling(run_dir, card):
    results, _ = load_run(run_dir)
    m = results["metrics"]
    assert f"| test | {m['test']['ece']:.3f} | {m['test_ece_calibrated']:.3f} |" in card
    assert f"T = {m['temperature']:.3f}" in card


@pytest.mark.slow
def test_card_gives_the_epochs_trained_and_the_selected_one(run_dir, card):
    results, _ = load_run(run_dir)
    assert (
        f"- Trained: {results['steps_trained']} steps = {results['epochs_trained']:.2f} epochs in "
        f"{results['rounds_completed']} of {results['rounds_planned']} planned rounds; "
        f"best (selected) epoch {results['best_round']} by validation AUC"
    ) in card


@pytest.mark.slow
def test_card_names_a_missed_class_apart_from_collapse(run_dir):
    _, arrays = load_run(run_dir)
    results = read_results(run_dir)
    results.flags = []
    y = np.repeat([0, 1], [90, 10])
    pred = np.zeros(100, int)
    pred[:20] = 1  # predictions spread over both classes, but no benign image found
    results.metrics["test"] = metrics.evaluate(y, np.eye(2)[pred], "binary-class",
                                               ["malignant", "benign"])  # fmt: skip
    assert (
        metrics.collapse_check(results.test, results.test, n_classes=2, task="binary-class") == []
    )
    card = render_model_card(results, arrays)
    assert "- Missed class (test): 'benign' (10 test images, 10.0%): recall 0%" in card
    assert metrics.MISSED_CLASS_ADVICE in card and "No flags" in card


@pytest.mark.slow
def test_card_lists_collapse_flags_or_says_there_are_none(run_dir, card):
    results, _ = load_run(run_dir)
    for flag in results["flags"]:
        assert f"- FLAG: {flag}" in card
    if not results["flags"]:
        assert "No flags" in card


@pytest.mark.slow
def test_card_computes_class_imbalance_from_the_true_labels(run_dir, card):
    _, arrays = load_run(run_dir)
    y = np.concatenate([arrays["val_labels"], arrays["test_labels"]]).ravel()
    share = np.mean(y == 0)
    assert f"malignant {share:.1%}" in card


@pytest.mark.slow
def test_card_names_the_28px_limit_and_the_intended_use(card):
    assert "Resolution: 28x28 pixels" in card
    assert "Not for diagnosis" in card and "research and education" in card


@pytest.mark.slow
def test_dermamnist_card_names_the_nc_license_and_lesion_duplicates(run_dir):
    _, arrays = load_run(run_dir)
    results = read_results(run_dir)
    results.dataset = {k: v for k, v in results.dataset.items() if k != "license"}
    results.dataset["name"] = "dermamnist"  # the license is taken from the catalogue instead
    card = render_model_card(results, arrays)
    assert "CC BY-NC 4.0 (non-commercial" in card
    assert "several images of the same lesion" in card


def test_unfinished_run_has_no_card(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(MedbenchError, match="finished run"):
        write_model_card(tmp_path)


@pytest.mark.slow
def test_card_command_rewrites_the_card(run_dir, capsys):
    (run_dir / "MODEL_CARD.md").unlink()
    assert main(["card", str(run_dir)]) == 0
    assert (run_dir / "MODEL_CARD.md").is_file()
    assert "MODEL_CARD.md" in capsys.readouterr().out


def test_card_command_on_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("medbench: error:")


@pytest.fixture
def v1_run_dir(tmp_path) -> Path:
    """A run folder of schema 1 (rounds named epochs): the results.json of a one-epoch
    BloodMNIST run with predictions for its 32 test images beside it."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(RESULTS_V1, run / "results.json")
    labels = (np.arange(32) % 8)[:, None]
    logits = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    np.savez(run / "predictions.npz", val_labels=labels, test_labels=labels, test_logits=logits)
    return run


@pytest.mark.slow
def test_card_of_a_schema_1_run_gives_its_epochs_and_best_epoch(v1_run_dir):
    old = json.loads(RESULTS_V1.read_text())
    card = write_model_card(v1_run_dir).read_text()
    assert (
        f"{old['epochs_completed']} of {old['epochs_planned']} planned rounds; "
        f"best (selected) epoch {old['best_epoch']} by validation AUC"
    ) in card


@pytest.mark.slow
def test_card_of_a_schema_1_run_gives_its_metrics(v1_run_dir):
    old = json.loads(RESULTS_V1.read_text())["metrics"]
    card = write_model_card(v1_run_dir).read_text()
    assert f"| val | {old['val']['acc']:.3f} | {old['val']['auc']:.3f} |" in card
    assert f"| test | {old['test']['ece']:.3f} | {old['test_ece_calibrated']:.3f} |" in card
