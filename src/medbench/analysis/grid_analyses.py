"""What a benchmark grid may add after its runs: robustness to the MedMNIST-C corruptions
and explanations, written next to the runs so the report can show them.

    OUT/robustness/   robustness.json, CSVs, figures (`medbench.analysis.robustness_files`),
                      per-run/ cache (`medbench.analysis.robustness`)
    OUT/explain/<dataset>-<size>-<model>/   `medbench.analysis.explain_files` output of the first seed's run

Both read only finished runs and never train. Robustness covers the 2D datasets that have
MedMNIST-C corruptions, scored against a baseline model of the grid (BE, rBE); explanations
cover the 2D runs. Datasets or models left out are named in one line each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medbench.data.corruptions import CORRUPTIONS
from medbench.errors import MedbenchError
from medbench.models import model_spatial_dims

ROBUSTNESS_DIR = "robustness"
EXPLAIN_DIR = "explain"


@dataclass(frozen=True)
class GridExtras:
    """`robustness_baseline`: evaluate robustness with BE/rBE relative to this model
    (None: no robustness); `explain`: explain the first seed's run of each dataset and
    model; `per_class`: explained test images per class and kind (correct, wrong)."""

    robustness_baseline: str | None = None
    explain: bool = False
    per_class: int = 4

    @property
    def any(self) -> bool:
        return self.robustness_baseline is not None or self.explain

    def check(self, datasets: Sequence[str], models: Sequence[str]) -> None:
        """Refuse, before anything trains, a robustness evaluation the grid cannot score."""
        base = self.robustness_baseline
        if base is None:
            return
        if not [d for d in datasets if d in CORRUPTIONS]:
            raise MedbenchError(
                f"--robustness: none of the grid's datasets ({', '.join(datasets)}) has "
                f"MedMNIST-C corruptions; they exist for {', '.join(CORRUPTIONS)}"
            )
        if base not in models:
            raise MedbenchError(
                f"--robustness scores BE and rBE against {base}, which the grid does not train; "
                f"add it to --models or choose --robustness-baseline among {', '.join(models)}"
            )

    def run(
        self,
        out: str | Path,
        *,
        data_dir: str | None = None,
        device: str = "auto",
        log: Callable[[str], None] = lambda line: None,
    ) -> list[Path]:
        """Evaluate the grid's finished runs; returns the folders written."""
        runs = finished_runs(Path(out))
        written = []
        if self.robustness_baseline is not None:
            folder = grid_robustness(out, runs, self.robustness_baseline, data_dir, device, log)
            written += [folder] if folder else []
        if self.explain:
            written += grid_explanations(out, runs, self.per_class, data_dir, device, log)
        return written


Run = tuple[Path, dict]  # a run folder and its results.json's config, read once


def finished_runs(out: Path) -> list[Run]:
    """Run folders under OUT/runs whose results.json says finished and that kept a model,
    each with its config."""
    found = []
    for results in sorted((out / "runs").glob("*/*/*/results.json")):
        data = json.loads(results.read_text())
        if data.get("status") == "finished" and (results.parent / "model.pt").is_file():
            found.append((results.parent, data["config"]))
    return found


def grid_robustness(
    out: str | Path,
    runs: Sequence[Run],
    baseline: str,
    data_dir: str | None,
    device: str,
    log: Callable[[str], None],
) -> Path | None:
    """Robustness of the runs whose dataset has corruptions, into OUT/robustness."""
    from medbench.analysis.robustness import evaluate_runs, summarize
    from medbench.analysis.robustness_files import write_robustness

    chosen = [run for run, config in runs if config["dataset"] in CORRUPTIONS]
    for dataset in sorted({config["dataset"] for _, config in runs} - set(CORRUPTIONS)):
        log(f"robustness: {dataset} left out (MedMNIST-C defines no corruptions medbench has)")
    if not chosen:
        return None
    folder = Path(out) / ROBUSTNESS_DIR
    results = evaluate_runs(
        chosen,
        folder / "per-run",
        data_dir=data_dir,
        device=device,
        on_run=lambda k, run: log(f"robustness [{k}/{len(chosen)}] {run.relative_to(out)}"),
    )
    write_robustness(results, summarize(results, baseline), folder)
    return folder


def grid_explanations(
    out: str | Path,
    runs: Sequence[Run],
    per_class: int,
    data_dir: str | None,
    device: str,
    log: Callable[[str], None],
) -> list[Path]:
    """Explanations of the lowest seed's run of each 2D (dataset, size, model)."""
    from medbench.analysis.explain_files import explain_run

    first: dict[tuple[str, int, str], Path] = {}
    for run, c in sorted(runs, key=lambda r: r[1]["seed"]):
        if model_spatial_dims(c["model"]) == 2:
            first.setdefault((c["dataset"], c["size"], run.parent.name), run)
    written = []
    for (dataset, size, model), run in sorted(first.items()):
        folder = Path(out) / EXPLAIN_DIR / f"{dataset}-{size}-{model}"
        if not (folder / "explain.json").is_file():  # done before: kept (a resumed grid)
            log(f"explain {run.relative_to(out)}")
            explain_run(run, folder, per_class=per_class, data_dir=data_dir, device=device)
        written.append(folder)
    return written
