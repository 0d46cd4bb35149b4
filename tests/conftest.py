"""Fixtures shared by the whole test suite.

Every test runs with $MEDBENCH_DATA_DIR and $MEDBENCH_CACHE_DIR pointing at its own temporary
folders (nothing is written into ~/.medmnist), with the network closed to anything but
this machine (no test may touch the internet) and the Hugging Face hub offline, over an
empty cache of the test run's own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

# One intra-op thread in tests and in the medbench processes they start: tests run many
# tiny batches (where threads buy nothing) and, beside subprocess tests, OpenMP threads
# spinning against each other on two cores made single steps 10-20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# huggingface_hub reads these once, when it is first imported (by timm, for hub weights), so
# setting them inside a test is too late: set here, before any test module imports it, they
# make the hub answer from an empty cache at once instead of retrying a network tests may
# not use, and keep tests away from the user's own cached weights.
_HF_HOME = tempfile.mkdtemp(prefix="medbench-tests-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME

import pytest  # noqa: E402
import torch  # noqa: E402

from support.tiny import TinyRuns, train_tiny_runs  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA_ENV = "MEDBENCH_SHARED_DATA"
# name, size: one stand-in per task type, gray and RGB, 28 and 64 px.
SYNTHETIC_DATASETS = (
    ("bloodmnist", 28),  # multi-class, RGB
    ("breastmnist", 28),  # binary, gray
    ("chestmnist", 28),  # multi-label, gray
    ("retinamnist", 28),  # ordinal regression, RGB
    ("dermamnist", 64),  # multi-class, RGB, 64 px
    ("pneumoniamnist", 64),  # binary, gray, 64 px
)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", help="also run the tests marked long (minutes each)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `long` run only with --long or a -m expression that names them."""
    if config.getoption("--long") or "long" in (config.getoption("-m") or ""):
        return
    long = [item for item in items if item.get_closest_marker("long")]
    if long:
        config.hook.pytest_deselected(items=long)
        items[:] = [item for item in items if not item.get_closest_marker("long")]


@pytest.fixture(autouse=True)
def isolated_medbench_dirs(tmp_path_factory, monkeypatch) -> Path:
    """Point medbench's data and cache folders at fresh temporary ones; return the data folder."""
    root = tmp_path_factory.mktemp("medbench-home")
    monkeypatch.setenv("MEDBENCH_DATA_DIR", str(root / "medmnist"))
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(root / "cache"))
    monkeypatch.delenv("MEDBENCH_MIRROR", raising=False)
    return root / "medmnist"


@pytest.fixture(autouse=True)
def no_internet(monkeypatch) -> None:
    """Refuse name look-ups of any host but this machine: a test that would download fails."""
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host not in _LOCAL_HOSTS:
            raise socket.gaierror(f"tests may not use the network (tried to reach {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def synthetic_data_dir(isolated_medbench_dirs) -> Path:
    """The test's data folder ($MEDBENCH_DATA_DIR) holding small stand-ins for
    SYNTHETIC_DATASETS under their official names (64/16/16 images; not official files)."""
    from medbench.data.synthetic import write_synthetic_like

    for name, size in SYNTHETIC_DATASETS:
        write_synthetic_like(isolated_medbench_dirs, name, size)
    return isolated_medbench_dirs


@pytest.fixture
def shared_medmnist() -> Path:
    """The folder of real MedMNIST files (../shared/medmnist beside the repository, or
    $MEDBENCH_SHARED_DATA); skips the test when it or its two files are absent (an empty
    folder of that name, e.g. left by a failed download, is not the data)."""
    folder = Path(
        os.environ.get(SHARED_DATA_ENV)
        or Path(__file__).resolve().parents[1].parent / "shared" / "medmnist"
    )
    if not all((folder / f"{name}.npz").is_file() for name in ("breastmnist", "pneumoniamnist")):
        pytest.skip(f"real MedMNIST data not found at {folder} (set ${SHARED_DATA_ENV})")
    return folder


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> TinyRuns:
    """Two finished runs of the tiny model (seeds 0 and 1) on a synthetic BreastMNIST in
    their own data folder, trained once per test process and shared: tests only read them
    (`copy_of_tiny_run` gives a copy to change)."""
    root = tmp_path_factory.mktemp("tiny-runs")
    with pytest.MonkeyPatch.context() as mp:  # no test's own folders exist yet at this scope
        mp.setenv("MEDBENCH_DATA_DIR", str(root / "default-data"))
        mp.setenv("MEDBENCH_CACHE_DIR", str(root / "cache"))
        return train_tiny_runs(root)


@pytest.fixture
def copy_of_tiny_run(tiny_runs, tmp_path) -> Path:
    """A copy of the first tiny run, for a test that changes its files."""
    return Path(shutil.copytree(tiny_runs.runs[0], tmp_path / "run"))
