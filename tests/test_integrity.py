"""What must not be lost survives a full disk, and reading never needs to write.

A full disk is stood in for by a file size limit (RLIMIT_FSIZE) in a child process: a
write past it fails with EFBIG, as one past a full disk fails with ENOSPC, and the
process is not killed (SIGXFSZ ignored). Every command then says, in one line, which file
it could not write and why, exits 2, and leaves no temporary file and every earlier file
as it was."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medbench.training import checkpoint as ckpt
from support.another_user import as_another_user
from support.models import save_model
from support.processes import run_forked
from support.report_fixtures import Cell, write_grid

LIMIT_BYTES = 4096


def run_limited(code: str, limit: int = LIMIT_BYTES) -> subprocess.CompletedProcess:
    """Run Python `code` in a child whose files may not grow past `limit` bytes (a fork of
    this process: the limit is the child's alone, and it imports nothing again)."""
    return run_forked(code, file_size_limit=limit)


def run_cli_limited(*argv: str, limit: int = LIMIT_BYTES) -> subprocess.CompletedProcess:
    return run_limited(f"from medbench.cli import main\nsys.exit(main({list(argv)!r}))", limit)


def assert_one_line_error(proc: subprocess.CompletedProcess, path: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("medbench: error: cannot write ")
    assert "file too large" in lines[0] and str(path) in lines[0]


def the_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit 2, no traceback, and one error line, the last on stderr (warning and progress
    lines may come before it)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medbench: error")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- full disk


@pytest.mark.slow
def test_checkpoint_save_on_a_full_disk_keeps_the_earlier_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save({"step": 1, "weights": torch.zeros(4)}, path)
    before = path.read_bytes()
    proc = run_limited(f"""
        import torch
        from medbench.training import checkpoint
        from medbench.errors import MedbenchError
        try:
            checkpoint.save({{"step": 2, "weights": torch.ones(100_000)}}, {str(path)!r})
        except MedbenchError as exc:
            print(exc, file=sys.stderr)
            sys.exit(2)
    """)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr
    assert "file too large" in proc.stderr
    assert path.read_bytes() == before
    assert temporary_files(tmp_path) == []


@pytest.mark.slow
def test_torchscript_export_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    model_file = save_model(tmp_path / "run" / "model.pt")
    out = tmp_path / "out" / "model.torchscript.pt"
    proc = run_cli_limited("export", str(model_file), "--format", "torchscript", "--out", str(out))
    assert_one_line_error(proc, out)
    assert not out.exists()
    assert temporary_files(tmp_path) == []


@pytest.mark.slow
def test_onnx_export_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    model_file = save_model(tmp_path / "run" / "model.pt")
    out = tmp_path / "out" / "model.onnx"
    proc = run_cli_limited("export", str(model_file), "--format", "onnx", "--out", str(out))
    assert_one_line_error(proc, out)
    assert not out.exists()
    assert temporary_files(tmp_path) == []


@pytest.mark.slow
def test_predict_csv_on_a_full_disk_keeps_the_earlier_csv(tmp_path):
    model_file = save_model(tmp_path / "run" / "model.pt")
    images = np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    csv_path = tmp_path / "out" / "predictions.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("file,predicted\nearlier.png,normal\n")
    proc = run_cli_limited("predict", str(model_file), str(folder), "--csv", str(csv_path))
    assert_one_line_error(proc, csv_path)
    assert csv_path.read_text() == "file,predicted\nearlier.png,normal\n"
    assert temporary_files(tmp_path) == []


@pytest.mark.slow
def test_report_on_a_full_disk_keeps_the_earlier_report(tmp_path):
    folder = write_grid(
        tmp_path / "bench", [Cell("breastmnist", "resnet18", seed=s) for s in (0, 1)]
    )
    from medbench.report import build_report

    build_report(folder)
    before = snapshot(folder)
    proc = run_cli_limited("report", str(folder), limit=2048)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith("medbench: error: cannot write ") and "file too large" in line
    failed = line.removeprefix("medbench: error: cannot write ").split(": file too large")[0]
    name = str(Path(failed).relative_to(folder))
    assert snapshot(folder)[name] == before[name]
    assert temporary_files(folder) == []


def _tiny_data(folder: Path) -> Path:
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(folder, "breastmnist")
    return folder


def assert_stops_on_the_checkpoint(proc: subprocess.CompletedProcess, folder: Path) -> None:
    """Exit 2, no traceback, and the error is the last stderr line, naming the checkpoint
    that could not be written (progress and warning lines may come before it)."""
    line = the_error_line(proc)
    assert line.startswith("medbench: error: cannot write ") and "checkpoint.pt" in line
    assert "file too large" in line
    assert temporary_files(folder) == []


@pytest.mark.slow
def test_train_on_a_full_disk_stops_with_one_line(tmp_path):
    data = _tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--epochs", "1"]
    proc = run_cli_limited(*argv, "--data-dir", str(data), "--run-dir", str(run), limit=400_000)
    assert_stops_on_the_checkpoint(proc, tmp_path)
    assert not (run / "results.json").exists()  # nothing says finished


@pytest.mark.slow
def test_the_array_cache_on_a_full_disk_is_one_line_and_leaves_no_partial_cache(tmp_path):
    data = _tiny_data(tmp_path / "data")
    argv = ["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--epochs", "1"]
    proc = run_cli_limited(*argv, "--data-dir", str(data), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("medbench: error: cannot write ") and ".medbench-cache" in line
    assert temporary_files(tmp_path) == []
    assert not (tmp_path / "run").exists()  # nothing was trained


@pytest.mark.slow
def test_a_grid_on_a_full_disk_stops_with_one_line_and_its_store_still_reads(tmp_path):
    from medbench.runs.store import ResultsStore

    data = _tiny_data(tmp_path / "data")
    out = tmp_path / "bench"
    argv = ["benchmark", "--datasets", "breastmnist", "--models", "advanced_cnn"]
    proc = run_cli_limited(
        *argv, "--seeds", "1", "--epochs", "1", "--data-dir", str(data), "--out", str(out),
        limit=400_000,
    )  # fmt: skip
    assert_stops_on_the_checkpoint(proc, tmp_path)
    counts = ResultsStore(out, create=False).counts()
    assert counts["finished"] == 0 and sum(counts.values()) == 1


@pytest.mark.slow
def test_tune_on_a_full_disk_stops_at_the_first_trial_with_one_line(tmp_path):
    data = _tiny_data(tmp_path / "data")
    argv = ["tune", "--dataset", "breastmnist", "--model", "advanced_cnn", "--trials", "3"]
    proc = run_cli_limited(
        *argv, "--max-epochs", "1", "--min-epochs", "1", "--data-dir", str(data),
        "--out", str(tmp_path / "tune"), limit=400_000,
    )  # fmt: skip
    assert_stops_on_the_checkpoint(proc, tmp_path)
    assert "trial 0: failed" in proc.stdout and "trial 1" not in proc.stdout  # no retries


def test_a_study_storage_that_cannot_be_written_is_one_line_with_the_right_advice():
    import sqlalchemy.exc

    from medbench.workflows.study_storage import storage_error

    orig = Exception("disk I/O error")
    exc = sqlalchemy.exc.OperationalError("CREATE TABLE trials (\n id INTEGER\n)", {}, orig)
    assert "\n" in str(exc)  # SQLAlchemy's own message: the SQL and a background link
    message = str(storage_error("sqlite:///x/tune.sqlite", exc))
    assert "\n" not in message and "disk I/O error" in message
    assert "free some disk space" in message and "check --storage" not in message
    bad_url = str(storage_error("nosuch://x", ValueError("Could not parse URL\nmore")))
    assert bad_url.endswith("Could not parse URL; check --storage (an SQLAlchemy URL)")


# ----------------------------------------------------------------------------- reading


def _read_as_another_user(folder: Path) -> str:
    """What reading `folder`'s store (as `medbench report` does) gives a user who may not
    write there: 'ok <n runs>' or the error."""
    from medbench.report.collect import load_runs

    return as_another_user(lambda: f"ok {len(load_runs(folder))}")


def test_a_read_only_results_store_is_read_without_writing(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="medbench-read-only-"))  # one any user can reach
    try:
        folder = write_grid(
            root / "bench", [Cell("breastmnist", "resnet18", seed=s) for s in (0, 1)]
        )
        store = folder / "results.sqlite"
        before = store.read_bytes()
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        assert _read_as_another_user(folder) == "ok 2"
        assert store.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["results.sqlite", "runs"]
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(root)


def test_reading_a_store_writes_nothing_to_it(tmp_path):
    from medbench.runs.store import ResultsStore

    folder = write_grid(tmp_path / "bench", [Cell("breastmnist", "resnet18")])
    store = folder / "results.sqlite"
    before = store.read_bytes()
    rows = ResultsStore(folder, create=False).rows()
    assert len(rows) == 1 and rows[0]["status"] == "finished"
    assert store.read_bytes() == before


def test_an_unreadable_store_is_left_alone_and_never_advised_away(tmp_path, capsys):
    from medbench.cli import main

    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "results.sqlite").write_bytes(b"not a database, but maybe someone's results")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.sqlite" in err
    assert "left as it is" in err
    assert "move it away" not in err and "delete" not in err
    assert (
        folder / "results.sqlite"
    ).read_bytes() == b"not a database, but maybe someone's results"


# -- a byte-flipped file is refused by every command that reads it ---------------------------


@pytest.fixture(scope="module")
def flipped_run(tiny_runs, tmp_path_factory):
    """Copies of the two tiny runs, as a/ and b/, whose a/model.pt had 400 bytes flipped in
    the middle after training, and of their data."""
    root = tmp_path_factory.mktemp("flipped")
    shutil.copytree(tiny_runs.data_dir, root / "data")
    for name, run in zip(("a", "b"), tiny_runs.runs, strict=True):
        shutil.copytree(run, root / name)
    model = root / "a" / "model.pt"
    data = bytearray(model.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(b ^ 0xFF for b in data[middle : middle + 400])
    model.write_bytes(bytes(data))
    np.save(root / "image.npy", np.zeros((28, 28), dtype=np.uint8))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{run}", "--data-dir", "{data}"],
        ["predict", "{run}", "{image}"],
        ["export", "{run}", "--format", "torchscript", "--out", "{out}"],
        ["ensemble", "{run}", "{other}", "--tta", "--data-dir", "{data}"],
        [
            "train",
            "--dataset",
            "breastmnist",
            "--model",
            "efficientnet",
            "--model-option",
            "width=0.25",
            "--epochs",
            "1",
            "--pretrained",
            "{run}",
            "--data-dir",
            "{data}",
            "--run-dir",
            "{out}",
        ],
    ],
    ids=["evaluate", "predict", "export", "ensemble-tta", "train-pretrained-on-it"],
)
def test_a_byte_flipped_model_is_refused_by_every_command_with_one_line(
    flipped_run, command, capsys
):
    from medbench.cli import main

    values = {
        "run": str(flipped_run / "a"),
        "other": str(flipped_run / "b"),
        "data": str(flipped_run / "data"),
        "image": str(flipped_run / "image.npy"),
        "out": str(flipped_run / "exported.pt"),
    }
    assert main([part.format(**values) for part in command]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("medbench: error")]
    assert len(err) == 1 and "corrupt" in err[0] and "model.pt" in err[0]
    assert not (flipped_run / "exported.pt").exists()


def test_run_files_of_another_shape_are_refused_by_ensemble_and_card_with_one_line(
    tmp_path, capsys
):
    from medbench.cli import main

    # The report fixtures' runs have no calibration temperature and no channel count.
    folder = write_grid(tmp_path / "bench", [Cell("breastmnist", "resnet18", seed=s) for s in (0, 1)])  # fmt: skip
    runs = sorted(str(p) for p in (folder / "runs").iterdir())
    for argv, missing in ((["ensemble", *runs], "temperature"), (["card", runs[0]], "n_channels")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and missing in err, err


# -- the commands that write beside finished runs ------------------------------------------


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Synthetic breastmnist data (its array cache already unpacked) and two finished runs
    of different sizes: `small` (timm's test_efficientnet) and `large` (efficientnet at a
    quarter width, about four times the bytes)."""
    from medbench.data.synthetic import write_synthetic_like
    from medbench.training.config import TrainConfig
    from medbench.training.engine import train

    root = tmp_path_factory.mktemp("finished")
    write_synthetic_like(root / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    models = {"small": ("timm:test_efficientnet", {}), "large": ("efficientnet", {"width": 0.25})}
    for name, (model, options) in models.items():
        config = TrainConfig(
            dataset="breastmnist", model=model, model_options=options, epochs=1, batch_size=32,
            device="cpu", data_dir=str(root / "data"), run_dir=str(root / name),
        )  # fmt: skip
        train(config, progress=False, measure=False)
    return root


@pytest.mark.slow
def test_an_ensemble_on_a_full_disk_is_one_line_and_leaves_no_part_of_itself(finished_runs):
    small, large = finished_runs / "small", finished_runs / "large"
    members = snapshot(finished_runs / "small") | snapshot(finished_runs / "large")
    limit = (small / "model.pt").stat().st_size + 4096  # the small member fits, the large not
    assert (large / "model.pt").stat().st_size > limit
    out = finished_runs / "ensemble"
    argv = ["ensemble", str(small), str(large), "--method", "average", "--out", str(out)]
    proc = run_cli_limited(*argv, limit=limit)
    assert_one_line_error(proc, out / "members")
    assert not out.exists()  # not the member that fitted, nor a folder for it
    assert snapshot(small) | snapshot(large) == members
    assert temporary_files(finished_runs) == []


@pytest.mark.slow
def test_an_ensemble_saved_again_on_a_full_disk_keeps_the_earlier_one(finished_runs):
    from medbench.workflows.ensemble import build_ensemble

    small, large = finished_runs / "small", finished_runs / "large"
    out = finished_runs / "earlier-ensemble"
    build_ensemble([small], "average", out)  # the new one's first member is the same file
    before = snapshot(out)
    inodes = {p: p.stat().st_ino for p in out.rglob("*")}
    limit = (small / "model.pt").stat().st_size + 4096
    argv = ["ensemble", str(small), str(large), "--method", "average", "--out", str(out)]
    proc = run_cli_limited(*argv, limit=limit)
    assert_one_line_error(proc, out / "members")
    assert snapshot(out) == before
    assert {p: p.stat().st_ino for p in out.rglob("*")} == inodes  # not one replaced
    assert temporary_files(finished_runs) == []


@pytest.mark.slow
def test_a_model_card_on_a_full_disk_keeps_the_earlier_card(finished_runs):
    card = finished_runs / "small" / "MODEL_CARD.md"
    card.write_text("# an earlier card\n")
    proc = run_cli_limited("card", str(finished_runs / "small"), limit=1024)
    assert_one_line_error(proc, card)
    assert card.read_text() == "# an earlier card\n"
    assert temporary_files(finished_runs) == []


@pytest.mark.slow
def test_a_knn_transfer_on_a_full_disk_is_one_line_and_writes_no_results(finished_runs):
    out = finished_runs / "transfer"
    argv = ["transfer", "--dataset", "breastmnist", "--model", "timm:test_efficientnet"]
    proc = run_cli_limited(
        *argv, "--mode", "knn", "--pretrained", str(finished_runs / "small"), "--device", "cpu",
        "--data-dir", str(finished_runs / "data"), "--out", str(out), "--quiet", limit=1024,
    )  # fmt: skip
    results = out / "knn-breastmnist" / "results.json"
    line = the_error_line(proc)  # after the warning that the synthetic file is not official
    assert line.startswith(f"medbench: error: cannot write {results}: file too large")
    assert not results.exists()
    assert temporary_files(finished_runs) == []


@pytest.mark.slow
def test_a_search_on_a_full_disk_stops_at_the_first_trial_with_one_line(tmp_path):
    data = _tiny_data(tmp_path / "data")
    argv = ["search", "--dataset", "breastmnist", "--model", "advanced_cnn", "--trials", "3"]
    proc = run_cli_limited(
        *argv, "--population", "2", "--epochs", "1", "--data-dir", str(data),
        "--out", str(tmp_path / "search"), limit=400_000,
    )  # fmt: skip
    assert_stops_on_the_checkpoint(proc, tmp_path)
    assert "trial 1" not in proc.stdout + proc.stderr  # no retries
    assert not (tmp_path / "search" / "pareto.json").exists()


@pytest.mark.slow
def test_a_download_on_a_full_disk_is_one_line_and_never_becomes_the_file(tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = _tiny_data(tmp_path / "served")  # a synthetic breastmnist.npz, well over the limit
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            requests.append(format % args)

    handler = functools.partial(Handler, directory=str(served))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        mirror = f"http://127.0.0.1:{server.server_address[1]}"
        data = tmp_path / "data"
        proc = run_cli_limited("download", "breastmnist", "--data-dir", str(data),
                               "--mirror", mirror, "--retries", "1", "--quiet")  # fmt: skip
        server.shutdown()
    part = data / "breastmnist.npz.part"
    assert_one_line_error(proc, part)
    assert len(requests) == 1  # a full disk is not retried: waiting cannot free it
    assert not (data / "breastmnist.npz").exists()
    # The downloader resumes from its .part (a Range request), so what was received stays.
    assert not part.exists() or part.stat().st_size <= LIMIT_BYTES
    assert temporary_files(tmp_path) == []
