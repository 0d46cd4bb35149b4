"""A grid's robustness and explanations (`benchmark --robustness --explain`), and the report
sections that show them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from medbench.analysis.grid_analyses import GridExtras
from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.report.extras import markdown_html


def test_a_grid_without_the_baseline_or_without_corruptions_is_refused_before_training():
    extras = GridExtras(robustness_baseline="resnet18")
    with pytest.raises(MedbenchError, match="does not train; add it to --models"):
        extras.check(["breastmnist"], ["advanced_cnn", "efficientnet"])
    with pytest.raises(MedbenchError, match="none of the grid's datasets .*organmnist3d"):
        extras.check(["organmnist3d"], ["resnet18_3d", "resnet18"])
    extras.check(["breastmnist", "organmnist3d"], ["resnet18", "resnet18_3d"])  # one is enough
    GridExtras(explain=True).check(["organmnist3d"], ["resnet18_3d"])  # no robustness: no check


def test_sections_convert_to_html_with_their_tables_and_images_embedded(tmp_path):
    (tmp_path / "sub").mkdir()
    png = b"\x89PNG fake bytes"
    (tmp_path / "sub" / "f.png").write_bytes(png)
    text = (
        "## Title `x`\n\nOne line\nand its second.\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n"
        "![the caption](sub/f.png)\n\n![gone](sub/none.png)\n"
    )
    out = markdown_html(text, tmp_path)
    assert "<h2>Title <code>x</code></h2>" in out
    assert "<p>One line and its second.</p>" in out
    assert (
        "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;2&gt;</td></tr></table>" in out
    )
    assert base64.b64encode(png).decode() in out and "<figcaption>the caption</figcaption>" in out
    assert "[missing figure: sub/none.png]" in out


@pytest.mark.slow
def test_benchmark_with_robustness_and_explanations_reports_both_and_resumes(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    data = tmp_path / "data"
    write_synthetic_like(data, "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    out = tmp_path / "grid"
    args = [
        "benchmark", "--datasets", "breastmnist", "--models", "advanced_cnn,resnet18",
        "--seeds", "1", "--data-dir", str(data), "--out", str(out), "--epochs", "1",
        "--device", "cpu", "--quiet", "--model-option", "width=0.25", "--batch-size", "32",
        "--robustness", "--explain",
    ]  # fmt: skip
    assert main(args) == 0
    robustness = json.loads((out / "robustness" / "robustness.json").read_text())
    assert robustness["baseline"] == "resnet18"
    assert sorted(s["model"] for s in robustness["summaries"]) == ["advanced_cnn", "resnet18"]
    for model in ("advanced_cnn", "resnet18"):
        assert (out / "explain" / f"breastmnist-28-{model}" / "explain.json").is_file()
    report = (out / "REPORT.md").read_text()
    assert "## Robustness (MedMNIST-C corruptions)" in report
    assert "](robustness/robustness-breastmnist-28.png)" in report
    assert "## Explanations: resnet18 on breastmnist" in report
    assert "](explain/breastmnist-28-resnet18/gallery-" in report
    page = (out / "report.html").read_text()
    assert "<h2>Robustness (MedMNIST-C corruptions)</h2>" in page and "missing figure" not in page

    cached = sorted((out / "robustness" / "per-run").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    explained = (out / "explain" / "breastmnist-28-resnet18" / "explain.json").stat().st_mtime_ns
    assert main(args) == 0  # a rerun: nothing trained, evaluated or explained again
    assert [p.stat().st_mtime_ns for p in cached] == stamps and len(cached) == 2
    assert (
        out / "explain" / "breastmnist-28-resnet18" / "explain.json"
    ).stat().st_mtime_ns == explained


def test_the_report_of_a_folder_without_extras_has_no_such_sections(tmp_path):
    from medbench.report.extras import load_sections

    assert load_sections(Path(tmp_path), Path(tmp_path)) == []
