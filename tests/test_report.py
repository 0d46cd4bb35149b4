"""The report: files, table, findings computed from the numbers, provenance; built from
stored results only (runs come from a stand-in train function)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.report import build_report
from medbench.report.collect import Group, Run
from medbench.report.findings import compare_top_two
from medbench.report.published import load_published
from medbench.runs.results import RunResults
from medbench.workflows.benchmark import run_grid
from medbench.workflows.grid_plan import plan_grid
from support.fake_training import make_fake_train
from support.grids import run_benchmark_with

GRID = {
    "datasets": "dermamnist,octmnist",
    "models": "advanced_cnn,resnet18",
    "epochs": 2,
    "progress": False,
    "report": False,
}


def _study(folder: Path, accuracy: dict, seeds=3, **fake) -> Path:
    with_warnings = fake.pop("warn", False)
    if with_warnings:
        with pytest.warns(Warning):
            run_benchmark_with(
                **GRID, seeds=seeds, out=folder, train_fn=make_fake_train(accuracy, **fake)
            )
    else:
        run_benchmark_with(
            **GRID, seeds=seeds, out=folder, train_fn=make_fake_train(accuracy, **fake)
        )
    return folder


RESULTS_V1 = Path(__file__).parent / "fixtures" / "results_v1.json"

CNN_WINS = {
    ("dermamnist", "advanced_cnn"): 0.80,
    ("dermamnist", "resnet18"): 0.70,
    ("octmnist", "advanced_cnn"): 0.78,
    ("octmnist", "resnet18"): 0.72,
}
RESNET_WINS = {
    ("dermamnist", "advanced_cnn"): 0.66,
    ("dermamnist", "resnet18"): 0.76,
    ("octmnist", "advanced_cnn"): 0.70,
    ("octmnist", "resnet18"): 0.79,
}


@pytest.fixture(scope="module")
def cnn_study(tmp_path_factory) -> Path:
    return _study(tmp_path_factory.mktemp("cnn"), CNN_WINS)


@pytest.fixture(scope="module")
def cnn_report(cnn_study):
    return build_report(cnn_study)


@pytest.mark.slow
def test_report_writes_markdown_html_csv_json_and_plots(cnn_report):
    for path in (
        cnn_report.markdown,
        cnn_report.html,
        cnn_report.csv,
        cnn_report.json,
        cnn_report.summary,
    ):
        assert path.exists() and path.stat().st_size > 0
    names = {p.name for p in cnn_report.plots}
    for expected in (
        "accuracy_heatmap.png",
        "accuracy_vs_params.png",
        "accuracy_vs_flops.png",
        "efficiency.png",
        "curves_dermamnist.png",
        "confusion_octmnist.png",
        "reliability_dermamnist.png",
    ):
        assert expected in names
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in cnn_report.plots)


@pytest.mark.slow
def test_html_is_self_contained_with_every_plot_embedded(cnn_report):
    text = cnn_report.html.read_text()
    assert text.count("data:image/png;base64,") == len(cnn_report.plots)
    assert "src='plots/" not in text and 'src="http' not in text


@pytest.mark.slow
def test_table_shows_mean_std_and_n_beside_published_and_reference_rows(cnn_report):
    md = cnn_report.markdown.read_text()
    assert (
        "| Dataset | Model | Source | Test accuracy | Test AUC | Parameters | FLOPs | Efficiency | Trained (mean) |"
        in md
    )
    assert "this study (n=3)" in md
    assert "| dermamnist | ResNet-18 (28) | published: MedMNIST v2 | 73.5% | 0.917 |" in md
    assert "| octmnist | efficientnet | reference study | 25.0% (collapsed) |" in md
    assert load_published()["citation"] in md


@pytest.mark.slow
def test_csv_and_json_have_one_row_per_run_with_the_run_files_numbers(cnn_report):
    rows = list(csv.DictReader(cnn_report.csv.open()))
    runs = json.loads(cnn_report.json.read_text())
    assert len(rows) == len(runs) == 12
    for row in runs:
        results = json.loads(Path(row["results_path"]).read_text())
        assert row["test_acc"] == results["metrics"]["test"]["acc"]
        assert row["n_params"] == results["model"]["n_params"]


@pytest.mark.slow
def test_findings_name_the_winner_from_the_numbers(cnn_report, tmp_path):
    other = build_report(_study(tmp_path / "resnet", RESNET_WINS, md5_matches=False), plots=False)
    assert cnn_report.findings.best_overall == "advanced_cnn"
    assert other.findings.best_overall == "resnet18"
    assert cnn_report.findings.winners == {"dermamnist": "advanced_cnn", "octmnist": "advanced_cnn"}
    assert other.findings.winners == {"dermamnist": "resnet18", "octmnist": "resnet18"}
    # Every sentence reads differently, except the license note (a fact of the dataset).
    # (and the majority-class baseline and the collapse check's count, facts of the test set,
    # and that two datasets are too few to test a ranking across them, a fact of the grid).
    facts = ("License:", "No run collapsed", "Across datasets the ranking cannot be tested")
    numbers = [
        s
        for s in cnn_report.findings.findings
        if not s.startswith(facts) and "majority-class baseline" not in s
    ]
    assert set(numbers).isdisjoint(other.findings.findings)
    assert cnn_report.findings.recommendations != other.findings.recommendations


@pytest.mark.slow
def test_a_real_difference_on_the_test_images_is_called_better(cnn_report):
    """dermamnist: 80% against 70% on the same 300 test images is a difference McNemar's
    test resolves after Holm's correction, so the findings and the advice name a winner."""
    comparisons = {c.dataset: c for c in cnn_report.findings.comparisons}
    derma = comparisons["dermamnist"]
    assert derma.paired and derma.significant is True and derma.p_value < 0.05
    assert derma.n_test == 300
    assert any(
        s.startswith("dermamnist: advanced_cnn leads") and "holds on these 300 test images" in s
        and "Holm p" in s
        for s in cnn_report.findings.findings
    )  # fmt: skip
    assert any(
        r.startswith("For dermamnist, use advanced_cnn")
        for r in cnn_report.findings.recommendations
    )


@pytest.mark.slow
def test_models_the_test_split_cannot_separate_are_called_indistinguishable(tmp_path):
    close = {k: 0.75 for k in CNN_WINS}
    report = build_report(_study(tmp_path, close), plots=False)
    assert report.findings.comparisons and not any(
        c.significant for c in report.findings.comparisons
    )
    assert all(c.paired for c in report.findings.comparisons)
    assert any("indistinguishable on this test split" in s for s in report.findings.findings)
    assert not any(" use " in r for r in report.findings.recommendations if r.startswith("For "))
    assert all(
        "indistinguishable" in r
        for r in report.findings.recommendations
        if r.startswith(("For dermamnist", "For octmnist"))
    )


def _drop_predictions(folder: Path) -> None:
    for path in folder.rglob("predictions.npz"):
        path.unlink()


@pytest.mark.slow
def test_without_saved_predictions_seeds_are_compared_by_welch(tmp_path):
    folder = _study(tmp_path, CNN_WINS)
    _drop_predictions(folder)
    report = build_report(folder, plots=False)
    derma = {c.dataset: c for c in report.findings.comparisons}["dermamnist"]
    assert not derma.paired and derma.significant is True
    assert any(
        "exceeds the seed-to-seed spread" in s and "Welch" in s for s in report.findings.findings
    )


def test_one_seed_without_saved_predictions_leaves_the_difference_untested(tmp_path):
    folder = _study(tmp_path, CNN_WINS, seeds=1)
    _drop_predictions(folder)
    report = build_report(folder, plots=False)
    assert all(c.significant is None for c in report.findings.comparisons)
    assert any("untested" in s for s in report.findings.findings)


@pytest.mark.slow
def test_collapse_and_val_test_gap_are_flagged(tmp_path):
    report = build_report(
        _study(tmp_path, CNN_WINS, collapse={("octmnist", "resnet18")}), plots=False
    )
    text = " ".join(report.findings.findings)
    assert "collapsed" in text and "resnet18 on octmnist" in text
    assert "differ by more than 5 points" in text
    assert any(
        "Do not use as trained" in r and "resnet18 on octmnist" in r
        for r in report.findings.recommendations
    )


@pytest.mark.slow
def test_unofficial_data_files_and_the_dermamnist_license_are_flagged(tmp_path):
    report = build_report(_study(tmp_path, CNN_WINS, md5_matches=False), plots=False)
    md = report.markdown.read_text()
    assert "not the official one" in md
    assert "NO (MD5 differs)" in md
    assert "dermamnist is CC BY-NC 4.0" in md


@pytest.mark.slow
def test_failed_runs_are_listed_but_kept_out_of_the_table(tmp_path):
    report = build_report(
        _study(tmp_path, CNN_WINS, fail={("octmnist", "resnet18")}, warn=True), plots=False
    )
    assert any("3 failed" in s for s in report.findings.findings)
    md = report.markdown.read_text()
    assert "| octmnist | resnet18 | this study" not in md
    unfinished = md.split("### Cells not finished", 1)[1].split("###", 1)[0]
    assert all(
        f"| octmnist | resnet18 | {seed} | failed |" in unfinished
        and "boom in resnet18" in unfinished
        for seed in range(3)
    )


def _group(model: str, accuracies: list[float]) -> Group:
    runs = [
        Run({"test_acc": acc, "seed": seed, "status": "finished"}, None)
        for seed, acc in enumerate(accuracies)
    ]
    return Group("dermamnist", 28, model, "h", runs, label=model)


def test_seeds_that_agree_exactly_separate_any_difference():
    cmp = compare_top_two(_group("a", [0.8, 0.8]), _group("b", [0.7, 0.7]))
    assert cmp.significant is True and cmp.p_value == 0.0


def test_seeds_that_agree_exactly_on_the_same_number_do_not_separate():
    cmp = compare_top_two(_group("a", [0.8, 0.8]), _group("b", [0.8, 0.8]))
    assert cmp.significant is False and cmp.p_value == 1.0


@pytest.fixture
def v1_folder(tmp_path) -> Path:
    """A folder of runs (no results store) holding one results.json of schema 1, written
    before rounds were named rounds, and a results.json that is not a run's."""
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    shutil.copy(RESULTS_V1, runs / "old" / "results.json")
    (runs / "other").mkdir()
    (runs / "other" / "results.json").write_text('[{"not": "a run"}]')
    return runs


def test_a_schema_1_run_is_reported_with_its_numbers(v1_folder, tmp_path):
    old = json.loads(RESULTS_V1.read_text())
    report = build_report(v1_folder, tmp_path / "report", plots=False)
    (row,) = list(csv.DictReader(report.csv.open()))
    assert row["model"] == "efficientnet" and row["dataset"] == "bloodmnist"
    assert float(row["test_acc"]) == old["metrics"]["test"]["acc"]
    assert int(row["n_params"]) == old["model"]["n_params"]
    assert row["epochs_completed"] == str(old["epochs_completed"])


def test_a_schema_2_run_reports_its_rounds_completed_as_epochs_completed(tmp_path):
    results = RunResults.from_json(json.loads(RESULTS_V1.read_text()))
    results.rounds_completed = 3
    (tmp_path / "runs" / "new").mkdir(parents=True)
    (tmp_path / "runs" / "new" / "results.json").write_text(json.dumps(results.to_json()))
    report = build_report(tmp_path / "runs", tmp_path / "report", plots=False)
    (row,) = list(csv.DictReader(report.csv.open()))
    assert row["epochs_completed"] == "3"


def test_a_schema_1_run_has_its_findings(v1_folder, tmp_path):
    report = build_report(v1_folder, tmp_path / "report", plots=False)
    assert report.findings.best_overall == "efficientnet"
    assert report.findings.winners == {"bloodmnist": "efficientnet"}


@pytest.mark.slow
def test_a_schema_1_run_has_its_training_curve_drawn(v1_folder, tmp_path):
    report = build_report(v1_folder, tmp_path / "report")
    assert "curves_bloodmnist.png" in {p.name for p in report.plots}


@pytest.mark.slow
def test_report_never_imports_the_training_engine(cnn_study, tmp_path):
    code = (
        "import sys; sys.modules['medbench.training.engine'] = None\n"
        f"from medbench.report import build_report; build_report({str(cnn_study)!r}, {str(tmp_path)!r}, plots=False)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "REPORT.md").exists()


def test_report_command_on_a_folder_without_results_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results in" in capsys.readouterr().err


@pytest.mark.slow
def test_report_command_writes_the_report(cnn_study, tmp_path, capsys):
    assert main(["report", str(cnn_study), "--out", str(tmp_path), "--no-plots"]) == 0
    assert (tmp_path / "report.html").exists()


@pytest.mark.slow
def test_a_run_whose_results_file_is_garbage_is_listed_not_silently_dropped(tmp_path):
    out = tmp_path / "out"
    cells = plan_grid(
        ["dermamnist"], ["advanced_cnn", "efficientnet"], [0, 1], out=out, base={"epochs": 2}
    )
    run_grid(cells, out, train_fn=make_fake_train(), progress=False)
    broken = sorted(out.rglob("results.json"))[0]  # advanced_cnn, seed 0
    broken.write_text("not json at all")
    text = build_report(out).markdown.read_text()
    assert "1 cell(s) have no results and are left out of the comparison" in text
    unfinished = text[text.index("### Cells not finished") :]
    assert (
        "advanced_cnn | 0 | finished | finished, but its results.json is missing or unreadable"
        in unfinished
    )
    assert "advanced_cnn | this study (n=1)" in text  # the run that is left, counted as one
