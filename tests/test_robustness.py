"""Robustness of runs to MedMNIST-C corruptions: BE / rBE arithmetic, summaries, files."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from medbench.analysis.robustness import (
    RunRobustness,
    Score,
    evaluate_robustness,
    find_runs,
    mean_relative_errors,
    relative_errors,
    summarize,
)
from medbench.cli import main
from medbench.data.corruptions import dataset_corruptions
from medbench.errors import MedbenchError
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from support.tiny import TINY_MODEL, tiny_options


def test_be_is_the_ratio_of_summed_errors_and_rbe_of_summed_degradations():
    model = {"noise": [0.2, 0.3, 0.4], "blur": [0.1, 0.1, 0.2]}
    base = {"noise": [0.3, 0.4, 0.5], "blur": [0.2, 0.2, 0.2]}
    out = relative_errors(model, 0.1, base, 0.15)
    assert out["noise"][0] == pytest.approx(0.9 / 1.2)
    assert out["noise"][1] == pytest.approx((0.1 + 0.2 + 0.3) / (0.15 + 0.25 + 0.35))
    assert out["blur"][0] == pytest.approx(0.4 / 0.6)
    assert out["blur"][1] == pytest.approx(0.1 / 0.15)
    be, rbe = mean_relative_errors(out)
    assert be == pytest.approx((0.9 / 1.2 + 0.4 / 0.6) / 2)
    assert rbe == pytest.approx((0.6 / 0.75 + 0.1 / 0.15) / 2)


def test_the_baseline_against_itself_scores_one():
    errors = {"noise": [0.2, 0.3, 0.5]}
    assert relative_errors(errors, 0.1, errors, 0.1) == {"noise": (1.0, 1.0)}


def test_an_undegraded_baseline_gives_nan_rbe_not_a_division_error():
    out = relative_errors({"c": [0.3, 0.3]}, 0.2, {"c": [0.2, 0.2]}, 0.2)
    assert out["c"][0] == pytest.approx(1.5) and math.isnan(out["c"][1])


def test_the_mean_rbe_leaves_out_corruptions_where_it_is_undefined():
    # e.g. a 224-px blur kernel scaled to 28 px that changes no prediction of the baseline
    model = {"noise": [0.3, 0.4], "blur": [0.2, 0.2]}
    base = {"noise": [0.25, 0.35], "blur": [0.1, 0.1]}
    out = relative_errors(model, 0.2, base, 0.1)
    assert math.isnan(out["blur"][1])
    be, rbe = mean_relative_errors(out)
    assert be == pytest.approx((0.7 / 0.6 + 0.4 / 0.2) / 2)
    assert rbe == pytest.approx(0.3 / 0.4)  # noise only
    assert all(math.isnan(v) for v in mean_relative_errors({"blur": (math.nan, math.nan)}))


def test_a_corruption_the_baseline_lacks_is_refused():
    with pytest.raises(MedbenchError, match="jpeg"):
        relative_errors({"jpeg": [0.1]}, 0.0, {"noise": [0.1]}, 0.0)


def fake_run(model: str, seed: int, clean: float, errors: dict[str, list[float]]) -> RunRobustness:
    scores = [
        Score(c, "noise", s, e, 1 - e, 0.5) for c, es in errors.items() for s, e in enumerate(es, 1)
    ]
    return RunRobustness(
        run_dir=f"/runs/{model}/seed{seed}", dataset="breastmnist", model=model, seed=seed,
        image_size=28, n_test=10, clean=Score("clean", "clean", 0, clean, 1 - clean, 0.5),
        scores=scores,
    )  # fmt: skip


def test_summaries_average_the_baseline_over_its_seeds_so_its_own_be_is_one():
    runs = [
        fake_run("resnet18", 0, 0.1, {"a": [0.2, 0.4], "b": [0.3, 0.3]}),
        fake_run("resnet18", 1, 0.2, {"a": [0.4, 0.6], "b": [0.3, 0.5]}),
        fake_run("cnn", 0, 0.1, {"a": [0.3, 0.3], "b": [0.2, 0.2]}),
    ]
    by_model = {m.model: m for m in summarize(runs, "resnet18")}
    assert by_model["resnet18"].be.mean == pytest.approx(1.0)
    assert by_model["resnet18"].rbe.mean == pytest.approx(1.0)
    assert by_model["resnet18"].be.std > 0  # the seeds differ
    # cnn against the baseline's seed means: a = [0.3, 0.5], b = [0.3, 0.4], clean 0.15
    cnn = by_model["cnn"]
    assert cnn.per_corruption["a"]["be"].mean == pytest.approx(0.6 / 0.8)
    assert cnn.per_corruption["b"]["rbe"].mean == pytest.approx(0.2 / 0.4)
    assert cnn.be.mean == pytest.approx((0.6 / 0.8 + 0.4 / 0.7) / 2)
    assert cnn.per_severity[1].mean == pytest.approx(0.25)


def test_runs_trained_with_another_augmentation_are_summarised_apart_from_the_baseline():
    base = fake_run("resnet18", 0, 0.1, {"a": [0.2, 0.4]})
    augmented = fake_run("resnet18", 0, 0.1, {"a": [0.1, 0.2]})
    augmented.augment = "medmnistc"
    by_model = {m.model: m for m in summarize([base, augmented], "resnet18")}
    assert set(by_model) == {"resnet18", "resnet18+medmnistc"}
    assert by_model["resnet18+medmnistc"].be.mean == pytest.approx(0.3 / 0.6)


def test_summaries_need_the_baseline_at_the_same_size():
    with pytest.raises(MedbenchError, match="resnet18"):
        summarize([fake_run("cnn", 0, 0.1, {"a": [0.2]})], "resnet18")


def test_results_round_trip_through_json():
    r = fake_run("cnn", 3, 0.1, {"a": [0.2, 0.3]})
    assert RunRobustness.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_a_folder_without_finished_runs_is_refused(tmp_path):
    with pytest.raises(MedbenchError, match="no finished run"):
        find_runs([tmp_path])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny one-epoch runs of synthetic breastmnist: the baseline model and another."""
    from medbench.data.synthetic import write_synthetic_like

    root = tmp_path_factory.mktemp("robustness")
    write_synthetic_like(root / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=24)
    for model, options in ((TINY_MODEL, tiny_options()), ("resnet18", {})):
        config = TrainConfig(
            dataset="breastmnist", model=model, model_options=options, epochs=1,
            batch_size=16, device="cpu", data_dir=str(root / "data"),
            run_dir=str(root / "bench" / model),
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the synthetic file is not the official one
            train(config, progress=False, measure=False)
    return root


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")
def test_a_run_is_scored_under_every_corruption_and_severity_reproducibly(two_runs):
    run = two_runs / "bench" / "advanced_cnn"
    a = evaluate_robustness(run, device="cpu")
    names = [s.name for s in dataset_corruptions("breastmnist")]
    assert [(s.corruption, s.severity) for s in a.scores] == [
        (c, k) for c in names for k in range(1, 6)
    ]
    assert a.n_test == 24 and a.clean.severity == 0
    assert all(0.0 <= s.balanced_error <= 1.0 for s in [a.clean, *a.scores])
    assert evaluate_robustness(run, device="cpu") == a


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")
def test_the_command_scores_a_folder_of_runs_against_the_baseline(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["robustness", str(two_runs / "bench"), "--out", str(out), "--device", "cpu"])
    assert code == 0
    written = {p.name for p in out.iterdir()}
    assert {"robustness.json", "robustness-runs.csv", "robustness-summary.csv", "report.md",
            "robustness-breastmnist-28.png"} <= written  # fmt: skip
    report = (out / "report.md").read_text()
    assert "| resnet18 | 1 |" in report and "| 1.000 | 1.000 |" in report
    obj = json.loads((out / "robustness.json").read_text())
    assert len(obj["runs"]) == 2 and len(obj["summaries"]) == 2
    assert "BE per corruption" in capsys.readouterr().out
