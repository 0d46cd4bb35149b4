"""Ensembles: weighting rules on constructed predictions, and build/save/load/TTA on tiny
runs of the suite's tiny model, trained once (the tiny_runs fixture)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.workflows.ensemble import (
    build_ensemble,
    combine,
    greedy_weights,
    load_ensemble,
    selection_score,
    tta_views,
    validation_weights,
)
from support.tiny import TINY_MODEL

BINARY = "binary-class"
MODEL = TINY_MODEL


def _probs(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], axis=1)


@pytest.fixture
def runs(tiny_runs):
    """The suite's two tiny runs (seeds 0 and 1) and the folder holding them and their data."""
    return tiny_runs.root, list(tiny_runs.runs)


def test_greedy_selection_leaves_out_a_useless_member_and_beats_the_worst():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    good = _probs(np.clip(0.5 + 0.4 * (2 * y - 1) + rng.normal(0, 0.3, 40), 0.01, 0.99))
    fair = _probs(np.clip(0.5 + 0.2 * (2 * y - 1) + rng.normal(0, 0.3, 40), 0.01, 0.99))
    noise = _probs(rng.random(40))
    probs = [noise, good, fair]
    weights = greedy_weights(probs, y[:, None], BINARY)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] == 0.0 and weights[1] > 0
    score = selection_score(y[:, None], combine(probs, weights), BINARY)
    assert score >= max(selection_score(y[:, None], p, BINARY) for p in probs)


def test_greedy_selection_combines_complementary_members():
    # Each member ranks one half of the validation set perfectly and the other at random.
    y = np.tile([0, 1], 20)
    rng = np.random.default_rng(1)
    first, second = rng.random(40), rng.random(40)
    first[:20] = np.where(y[:20] == 1, 0.9, 0.1)
    second[20:] = np.where(y[20:] == 1, 0.9, 0.1)
    probs = [_probs(first), _probs(second)]
    weights = greedy_weights(probs, y[:, None], BINARY)
    assert (weights > 0).all()
    combined = selection_score(y[:, None], combine(probs, weights), BINARY)
    assert combined > max(selection_score(y[:, None], p, BINARY) for p in probs)


def test_validation_weights_are_proportional_to_auc_above_chance():
    np.testing.assert_allclose(validation_weights([1.0, 0.75, 0.5, 0.4]), [2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(validation_weights([0.5, 0.3]), [0.5, 0.5])  # none beats chance


def test_tta_uses_only_the_flips_a_dataset_allows():
    assert tta_views("breastmnist") == ["identity", "hflip"]
    assert tta_views("pathmnist") == ["identity", "hflip", "vflip"]
    assert tta_views("pneumoniamnist") == ["identity"]


@pytest.mark.slow
def test_average_ensemble_reports_members_and_sums_their_cost(runs):
    _, dirs = runs
    results = build_ensemble(dirs, method="average")
    members = [json.loads((d / "results.json").read_text()) for d in dirs]
    assert [m["weight"] for m in results["members"]] == [0.5, 0.5]
    assert results["model"]["n_params"] == sum(m["model"]["n_params"] for m in members)
    assert results["timing"]["latency_ms_per_image"] == pytest.approx(
        sum(m["timing"]["latency_ms_per_image"] for m in members)
    )
    assert 0.0 <= results["metrics"]["test"]["acc"] <= 1.0
    assert results["metrics"]["test"]["n"] == 32


def test_an_ensemble_is_tested_against_the_best_single_run_on_the_same_images(runs):
    """Its test ACC/AUC carry intervals, and its gain over the best single run (by
    validation) carries the paired tests' p-values, recomputed here independently."""
    _, dirs = runs
    results = build_ensemble(dirs, method="average")
    ci = results["metrics"]["test_intervals"]
    for name in ("acc", "auc"):
        low, high = ci[name]
        assert low <= results["metrics"]["test"][name] <= high
    v = results["versus_best_single"]
    assert v["n_test"] == 32
    best = next(d for d in dirs if str(d) == results["best_single"]["run_dir"])
    arrays = np.load(best / "predictions.npz")
    labels = arrays["test_labels"][:, 0]
    single = np.load(best / "predictions.npz")["test_probs"]
    ensemble = np.mean([np.load(d / "predictions.npz")["test_probs"] for d in dirs], axis=0)
    right_e = ensemble.argmax(1) == labels
    right_s = single.argmax(1) == labels
    assert v["ensemble_only_right"] == int(np.sum(right_e & ~right_s))
    assert v["single_only_right"] == int(np.sum(right_s & ~right_e))
    assert 0 < v["acc_p"] <= 1 and 0 < v["auc_p"] <= 1


@pytest.mark.slow
def test_saved_ensemble_loads_and_predicts_its_saved_test_probabilities(runs, tmp_path):
    from medbench.data import load_dataset

    root, dirs = runs
    build_ensemble(dirs, method="greedy", out_dir=tmp_path / "ens")
    ensemble = load_ensemble(tmp_path / "ens")
    assert {k: ensemble.meta[k] for k in ("task", "image_size", "in_channels", "num_classes")} == {
        "task": BINARY, "image_size": 28, "in_channels": 1, "num_classes": 2,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset("breastmnist", 28, root / "data", progress=False)
    probs = ensemble.predict_proba(data.test.images)
    assert probs.shape == (32, 2)
    saved = np.load(tmp_path / "ens" / "predictions.npz")["test_probs"]
    np.testing.assert_allclose(probs, saved, atol=1e-4)


@pytest.mark.slow
def test_tta_ensemble_averages_flipped_views_and_counts_their_latency(runs, tmp_path):
    root, dirs = runs
    plain = build_ensemble(dirs, method="average")
    tta = build_ensemble(
        dirs, method="average", tta=True, data_dir=str(root / "data"), device="cpu",
        out_dir=tmp_path / "tta",
    )  # fmt: skip
    assert tta["tta_views"] == ["identity", "hflip"]
    assert tta["timing"]["latency_ms_per_image"] == pytest.approx(
        2 * plain["timing"]["latency_ms_per_image"]
    )
    assert load_ensemble(tmp_path / "tta").views == ["identity", "hflip"]


@pytest.mark.slow
def test_runs_of_different_datasets_are_refused(runs, tmp_path):
    _, dirs = runs
    other = tmp_path / "other"
    other.mkdir()
    results = json.loads((dirs[0] / "results.json").read_text())
    results["dataset"]["name"] = "dermamnist"
    (other / "results.json").write_text(json.dumps(results))
    (other / "predictions.npz").write_bytes((dirs[0] / "predictions.npz").read_bytes())
    with pytest.raises(MedbenchError, match="one dataset"):
        build_ensemble([dirs[0], other])


@pytest.mark.slow
def test_ensemble_command_prints_the_table_and_saves_the_folder(runs, tmp_path, capsys):
    root, _ = runs
    code = main(["ensemble", str(root), "--method", "weighted", "--out", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert code == 0
    assert "ensemble:weighted" in out and f"{MODEL}/seed1" in out
    assert (tmp_path / "e" / "ensemble.json").is_file()


def test_ensemble_command_without_runs_is_a_user_error(tmp_path, capsys):
    assert main(["ensemble", str(tmp_path)]) == 2
    assert "at least one finished run" in capsys.readouterr().err


def _test_images_npz(root, path):
    """The synthetic breastmnist file's test images as an npz of 'images'."""
    with np.load(root / "data" / "breastmnist.npz") as npz:
        np.savez(path, images=npz["test_images"])
    return path


@pytest.mark.slow
def test_predict_takes_a_saved_ensemble_folder_and_predicts_with_the_ensemble(runs, tmp_path):
    from medbench.serving.predict import predict

    root, dirs = runs
    build_ensemble(dirs, method="average", out_dir=tmp_path / "ens")
    result = predict(tmp_path / "ens", [_test_images_npz(root, tmp_path / "x.npz")], device="cpu")
    saved = np.load(tmp_path / "ens" / "predictions.npz")["test_probs"]
    np.testing.assert_allclose(result.probabilities, saved, atol=1e-4)
    assert result.label_names == load_ensemble(tmp_path / "ens").meta["label_names"]


@pytest.mark.slow
def test_predict_command_takes_a_saved_ensemble_folder(runs, tmp_path, capsys):
    root, dirs = runs
    build_ensemble(dirs, method="average", out_dir=tmp_path / "ens")
    npz = _test_images_npz(root, tmp_path / "x.npz")
    assert main(["predict", str(tmp_path / "ens"), str(npz), "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    saved = np.load(tmp_path / "ens" / "predictions.npz")["test_probs"]
    assert len(rows) == len(saved)
    np.testing.assert_allclose(list(rows[0]["probabilities"].values()), saved[0], atol=1e-4)


@pytest.mark.slow
def test_an_ensemble_is_never_written_into_a_member(runs, tmp_path):
    _, dirs = runs
    before = (dirs[0] / "predictions.npz").read_bytes()
    for out in (dirs[0], dirs[0] / "ensemble"):
        with pytest.raises(MedbenchError, match="inside the member run"):
            build_ensemble(dirs, method="average", out_dir=out)
    assert (dirs[0] / "predictions.npz").read_bytes() == before
    assert not (dirs[0] / "ensemble").exists()
