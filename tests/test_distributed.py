"""Training under torchrun: DistributedDataParallel over 2 CPU processes (gloo).

The runs use `timm:test_efficientnet_gn`, a tiny EfficientNet with GroupNorm. With
BatchNorm, two processes on CPUs normalise their half-batches separately (SyncBatchNorm
runs on GPUs only), which moves the loss by more than any useful tolerance; GroupNorm
normalises each image alone, so what differs from one process is only the order in which
floats are summed (DDP's gradient all-reduce). Measured on this test's runs: at most
3.2e-6 apart over 3 rounds; LOSS_TOLERANCE leaves a 30x margin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from medbench.cli import main
from medbench.data import load_dataset
from medbench.data.synthetic import write_synthetic_like
from medbench.training import checkpoint as ckpt
from medbench.training.config import TrainConfig
from medbench.training.engine import train

MODEL = "timm:test_efficientnet_gn"
LOSS_TOLERANCE = 1e-4  # absolute, on per-round mean training losses of about 2-3
RUN_FILES = {"model.pt", "predictions.npz", "results.json", "MODEL_CARD.md"}  # finished

# Runs `medbench` as one torchrun process. Processes other than rank 0 may not write any
# file (every medbench write goes through tempfile.mkstemp), and with
# KILL_AFTER_FIRST_CHECKPOINT rank 1 kills itself once rank 0 has written checkpoint.pt.
WORKER = """
import os, signal, sys, tempfile, threading, time
from pathlib import Path
from medbench.cli import main

if os.environ["RANK"] != "0":
    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {os.environ['RANK']} tried to write a file")
    tempfile.mkstemp = refuse
    if os.environ["RANK"] == "1" and os.environ.get("KILL_AFTER_FIRST_CHECKPOINT"):
        checkpoint = Path(sys.argv[sys.argv.index("--run-dir") + 1]) / "checkpoint.pt"
        def kill_once_checkpointed():
            while not checkpoint.exists():
                time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=kill_once_checkpointed, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)


@pytest.fixture
def data_dir(tmp_path):
    pytest.importorskip("timm")
    import timm

    if not timm.is_model("test_efficientnet_gn"):
        pytest.skip("this timm has no test_efficientnet_gn")
    write_synthetic_like(
        tmp_path / "data", "bloodmnist", 28, n_train=64, n_val=32, n_test=32, seed=1
    )
    return tmp_path / "data"


def train_args(data_dir, run_dir, epochs: int) -> list[str]:
    return ["train", "--dataset", "bloodmnist", "--model", MODEL, "--data-dir", str(data_dir),
            "--epochs", str(epochs), "--batch-size", "16", "--device", "cpu",
            "--precision", "fp32", "--run-dir", str(run_dir)]  # fmt: skip


def single_process_config(data_dir, run_dir, epochs: int) -> TrainConfig:
    return TrainConfig(
        dataset="bloodmnist",
        model=MODEL,
        epochs=epochs,
        batch_size=16,
        device="cpu",
        precision="fp32",
        data_dir=str(data_dir),
        run_dir=str(run_dir),
    )


def torchrun(tmp_path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    # torchrun's agent SIGTERMs the survivors once it sees a worker die; a 5 s monitor
    # interval leaves the survivor time to notice its lost partner and say so itself, which
    # a 1 s interval did not always do on a loaded 2-core machine.
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "--monitor-interval", "5", str(worker), *args]  # fmt: skip
    return subprocess.run(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MEDBENCH_DIST_TIMEOUT": "60", **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
def test_two_processes_follow_the_loss_trajectory_of_one_with_the_same_global_batch(
    tmp_path, data_dir
):
    done = torchrun(tmp_path, [*train_args(data_dir, tmp_path / "ddp", epochs=3), "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(done.stdout)  # rank 0's JSON alone: rank 1 prints nothing
    single = train(
        single_process_config(data_dir, tmp_path / "one", epochs=3), progress=False
    ).to_json()

    assert ddp["distributed"] == {"world_size": 2, "backend": "gloo", "sync_batchnorm": False}
    assert (
        ddp["steps_trained"] == single["steps_trained"] == 12
    )  # 64 images, global batch 16, 3 epochs
    ddp_loss = [h["train_loss"] for h in ddp["history"]]
    one_loss = [h["train_loss"] for h in single["history"]]
    assert ddp_loss == pytest.approx(one_loss, abs=LOSS_TOLERANCE)
    # Rank 0 alone wrote (rank 1's writes would have failed) and printed its round lines.
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == RUN_FILES
    assert done.stderr.count("round 3/3") == 1
    # The saved model holds the plain model's weights (no DDP "module." prefix).
    state = ckpt.load(tmp_path / "ddp" / "model.pt")["state_dict"]
    assert state.keys() == ckpt.load(tmp_path / "one" / "model.pt")["state_dict"].keys()


@pytest.mark.slow
def test_a_killed_process_ends_the_job_with_one_clear_error_and_a_resumable_checkpoint(
    tmp_path, data_dir
):
    run_dir = tmp_path / "killed"
    done = torchrun(
        tmp_path, train_args(data_dir, run_dir, epochs=6), KILL_AFTER_FIRST_CHECKPOINT="1"
    )

    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("medbench: error:")]
    assert len(errors) == 1, done.stderr[-3000:]  # the survivor, rank 0, says what happened
    assert "lost contact with the others" in errors[0] and "--resume" in errors[0]
    assert "Signal 9 (SIGKILL)" in done.stderr  # torchrun's report names the killed process
    assert not (run_dir / "results.json").exists()
    finished_rounds = len(ckpt.load(run_dir / "checkpoint.pt")["history"])
    assert 1 <= finished_rounds < 6

    data = load_dataset("bloodmnist", 28, data_dir, progress=False)
    resumed = train(
        single_process_config(data_dir, run_dir, epochs=6), data=data, progress=False, resume=True
    )
    assert resumed.rounds_completed == 6 and (run_dir / "results.json").is_file()


@pytest.mark.parametrize("command", ["benchmark", "tune", "search"])
def test_grid_commands_refuse_torchrun_with_one_line(command, monkeypatch, capsys):
    # Under torchrun every process would run the whole grid/study by itself.
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = {
        "benchmark": ["benchmark"],
        "tune": ["tune", "--dataset", "breastmnist", "--model", "advanced_cnn", "--trials", "2"],
        "search": ["search", "--dataset", "breastmnist"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not run under torchrun" in err[0]
