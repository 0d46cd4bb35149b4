"""What the benchmark scripts share: where the real data lives, the --seeds argument, mean ±
sample standard deviation over seeds, the test AUC with flip TTA, and replacing the marked
results section of a doc."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable
from pathlib import Path

from medbench.benchmark import parse_seeds
from medbench.errors import MedbenchError
from medbench.fsutil import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "medmnist"  # the real BreastMNIST / PneumoniaMNIST files


def seeds_argument(text: str) -> list[int]:
    """argparse type of --seeds: a count (`3`: seeds 0, 1, 2) or a list (`3,4,5`; `5,` for
    one), read by medbench's own `parse_seeds`; a bad value is argparse's one-line error."""
    try:
        return parse_seeds(text)
    except MedbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def flip_tta_test_auc(net, data, runtime, dataset: str) -> float:
    """Test AUC of `net` with its probabilities averaged over the image and the flips
    `dataset` allows (as `medbench ensemble --tta` does)."""
    from medbench import metrics
    from medbench.ensemble import predict_views, tta_views
    from medbench.inference import labels_numpy

    task = data.info.task
    probs = predict_views(net, data.test.images, runtime, task, 1.0, tta_views(dataset))
    return metrics.official_auc(labels_numpy(data.test.labels), probs, task)


def sd(values: Iterable[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: Iterable[float], digits: int = 3) -> str:
    """'mean ± sd' over seeds, or just the value when there is one."""
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {sd(values):.{digits}f}"


def replace_section(path: str | Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the markers `begin` and `end` in the doc at `path`."""
    path = Path(path)
    doc = path.read_text()
    head, found, rest = doc.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise SystemExit(f"{path} has no {begin} ... {end} section")
    atomic_write_text(path, f"{head}{begin}\n{text}\n{end}{tail}")


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace the doc section between `<!-- NAME:begin -->` and `<!-- NAME:end -->`."""
    replace_section(path, f"<!-- {name}:begin -->", f"<!-- {name}:end -->", text)


def add_doc_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    """--section NAME (the doc section to write) and --no-doc (print only)."""
    parser.add_argument(
        "--section",
        default=section,
        help="doc section to write: between <!-- NAME:begin --> and <!-- NAME:end -->",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="print the table, do not edit the doc"
    )


def publish(lines: list[str], doc: str | Path, args: argparse.Namespace) -> None:
    """Print the table and, unless --no-doc, write it into --section of `doc`."""
    table = "\n".join(lines)
    print(table)
    if not args.no_doc:
        write_section(doc, args.section, table)
