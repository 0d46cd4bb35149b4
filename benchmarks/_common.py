"""What the benchmark scripts share: where the real data lives, the command line of a script
with subcommands, the --seeds argument, mean ± sample standard deviation over seeds, the
test AUC with flip TTA, and the machine-readable results file (--csv) every script can
write, whose rows say when, where and how they were measured (the columns `date`,
`machine`, `torch` and `command`, as docs/make_tables.py reads them from
docs/results/*.csv). Only the standard library is imported at the top, so that a script
measuring memory or start-up is not changed by importing this module."""

from __future__ import annotations

import argparse
import csv
import io
import platform
import re
import shlex
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "medmnist"  # the real BreastMNIST / PneumoniaMNIST files
META = ("date", "machine", "torch", "command")
# Words of a CPU or GPU name that say nothing about its speed.
_NOISE = {"amd", "intel", "nvidia", "cpu", "processor", "r", "tm", "with", "radeon", "graphics"}


# ----------------------------------------------------------------------------- subcommands


def tool_parser(doc: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser of a script with subcommands (`doc` is its --help text) and the object
    that `add_subcommand` adds them to; one subcommand must be given."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    return parser, subcommands


def add_subcommand(
    subcommands: argparse._SubParsersAction,
    name: str,
    doc: str,
    run: Callable[[argparse.Namespace], Any],
) -> argparse.ArgumentParser:
    """Subcommand `name`, described by `doc` (its first line is the summary in the script's
    --help), that calls `run(args)`."""
    parser = subcommands.add_parser(
        name,
        help=doc.strip().splitlines()[0],
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def seeds_argument(text: str) -> list[int]:
    """argparse type of --seeds: a count (`3`: seeds 0, 1, 2) or a list (`3,4,5`; `5,` for
    one), read by medbench's own `parse_seeds`; a bad value is argparse's one-line error."""
    from medbench.errors import MedbenchError
    from medbench.workflows.grid_plan import parse_seeds

    try:
        return parse_seeds(text)
    except MedbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def flip_tta_test_auc(net, data, runtime, dataset: str) -> float:
    """Test AUC of `net` with its probabilities averaged over the image and the flips
    `dataset` allows (as `medbench ensemble --tta` does)."""
    from medbench.scoring import metrics
    from medbench.training.inference import labels_numpy
    from medbench.workflows.ensemble import predict_views, tta_views

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


# ----------------------------------------------------------------------------- --csv


def add_csv_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--csv PATH (append one row per `what`) and --machine NAME (its machine column)."""
    parser.add_argument(
        "--csv",
        type=Path,
        metavar="PATH",
        help=f"append one row per {what} to this CSV file, with the columns "
        "date,machine,torch,command (a new file gets a header; an existing one must have "
        "the same columns)",
    )
    parser.add_argument(
        "--machine",
        metavar="NAME",
        help="the machine column of the --csv rows (default: a slug of this machine's CPU, "
        "or of its GPU when the measurement ran on one, e.g. epyc-avx2)",
    )


def _slug(name: str) -> str:
    name = re.sub(r"\(.*?\)|@.*$|\b\d+-core\b|\b[\d.]+\s*ghz\b", " ", name.lower())
    words = [w for w in re.split(r"[^a-z0-9]+", name) if w and w not in _NOISE]
    return "-".join(words)


def machine_slug(device: str = "cpu") -> str:
    """A short name of what measured: the GPU (e.g. `h200`) when `device` is or may be
    CUDA and one is visible, else the CPU and the instruction set torch's CPU kernels use
    (e.g. `epyc-avx2`)."""
    import torch

    if device.split(":")[0] in ("auto", "cuda") and torch.cuda.is_available():
        return _slug(torch.cuda.get_device_name()) or "cuda"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1]
                break
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return "-".join(filter(None, (_slug(name) or platform.machine().lower(), capability)))


def command_line(argv: Sequence[str] | None = None) -> str:
    """How the script was run, as one shell line from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else Path(argv[0])
    return shlex.join(["python", str(shown), *argv[1:]])


def provenance(machine: str | None = None, device: str = "cpu") -> dict[str, str]:
    """The `date`, `machine`, `torch` and `command` columns of a results row."""
    import torch

    return {
        "date": date.today().isoformat(),
        "machine": machine or machine_slug(device),
        "torch": torch.__version__,
        "command": command_line(),
    }


def append_csv(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    machine: str | None = None,
    device: str = "cpu",
) -> None:
    """Append `rows` with their provenance columns to the CSV file at `path` (written
    whole and atomically: a killed script leaves the old file). A file that exists must
    have these columns, in this order."""
    from medbench.utils.fsutil import atomic_write_text

    if not rows:
        return
    path = Path(path)
    meta = provenance(machine, device)
    rows = [{**row, **meta} for row in rows]
    fields = list(rows[0])
    old = path.read_text() if path.is_file() else ""
    if old.strip():
        header = next(csv.reader(io.StringIO(old)))
        if header != fields:
            raise SystemExit(
                f"{path} has the columns {','.join(header)}; these rows have "
                f"{','.join(fields)}: write them to another --csv file"
            )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    if not old.strip():
        writer.writeheader()
    writer.writerows(rows)
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, (old if old.strip() else "") + out.getvalue())
    print(f"{'appended' if old.strip() else 'wrote'} {len(rows)} row(s) to {path}", file=sys.stderr)
