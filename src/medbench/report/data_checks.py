"""What the data files themselves say about a report's numbers: test images with an exact
or near copy in train or val (`medbench.data.audit.test_leakage`), for each dataset whose file a
finished run recorded and which is still there, unchanged (same MD5)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from medbench.data import load_dataset
from medbench.data.audit import NEAR_THRESHOLD, Leakage, test_leakage
from medbench.errors import MedbenchError
from medbench.report.collect import Run


def _data_files(runs: list[Run]) -> dict[tuple[str, int], tuple[Path, str]]:
    """(dataset, size) -> (the file and MD5 the first finished run of it recorded)."""
    files: dict[tuple[str, int], tuple[Path, str]] = {}
    for r in runs:
        if not r.finished or r.results is None:  # (a finished run has results)
            continue
        d = r.results.dataset
        key = (str(d.get("name")), int(r["size"] or d.get("size") or 28))
        if key not in files and d.get("file") and d.get("md5"):
            files[key] = (Path(str(d["file"])), str(d["md5"]))
    return files


def _leakage(name: str, size: int, path: Path, md5: str) -> Leakage | None:
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # the runs' own provenance notes already say it
            warnings.simplefilter("ignore")
            data = load_dataset(name, size, path.parent, download=False, progress=False)
    except (MedbenchError, OSError, ValueError):
        return None
    return test_leakage(data) if data.md5 == md5 and data.path == path else None


def leakage_findings(runs: list[Run], unit_of: Callable[[Run], str]) -> list[str]:
    """One finding per dataset whose test images leak, one for those checked clean."""
    out: list[str] = []
    clean: list[str] = []
    for (name, size), (path, md5) in _data_files(runs).items():
        found = _leakage(name, size, path, md5)
        if found is None:
            continue
        unit = unit_of(next(r for r in runs if r.finished and r["dataset"] == name))
        if not found.leaked:
            clean.append(unit)
            continue
        out.append(
            f"{unit}: {found.leaked} of {found.n_test} test images have an exact or near copy "
            f"(cosine >= {NEAR_THRESHOLD}) in train or val, {found.conflicting} with another "
            f"label (medbench audit {name}): its test scores partly reward remembering them."
        )
    if clean:
        out.append(
            f"Data audit: no test image of {', '.join(clean)} has an exact or near copy in train or val."
        )
    return out
