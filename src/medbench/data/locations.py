"""Where data files and medbench's caches live on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medbench.data.catalogue import dataset_info, medmnist_info
from medbench.errors import MedbenchError

DATA_DIR_ENV = "MEDBENCH_DATA_DIR"
CACHE_DIR_ENV = "MEDBENCH_CACHE_DIR"
CACHE_FOLDER = ".medbench-cache"  # beside the npz files


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: `data_dir` if given, else $MEDBENCH_DATA_DIR, else medmnist's
    own DEFAULT_ROOT (~/.medmnist), so files medmnist downloaded are reused and vice versa."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or medmnist_info().DEFAULT_ROOT
    return Path(data_dir).expanduser()


def missing_data_dir(data_dir: str | os.PathLike | None) -> MedbenchError | None:
    """The error for a data folder named by `data_dir` (--data-dir) that does not exist;
    None when it exists or none was named.

    A named folder is meant to hold the npz files already (the offline case), so a
    mistyped one must not be created and downloaded into. The default folder and
    $MEDBENCH_DATA_DIR are where data is configured to live: downloads create those.
    """
    if data_dir is None or str(data_dir) == "":
        return None
    folder = Path(data_dir).expanduser()
    if folder.is_dir():
        return None
    return MedbenchError(
        f"--data-dir {data_dir} does not exist (nothing was created); point it at the folder "
        f"that holds the MedMNIST npz files, or download into it first with 'medbench "
        f"download NAME --data-dir {data_dir}'"
    )


def dataset_path(name: str, size: int = 28, data_dir: str | os.PathLike | None = None) -> Path:
    """The path of a dataset's npz under its official file name (it may not exist yet)."""
    return resolve_data_dir(data_dir) / dataset_info(name).file_name(size)


def user_cache_dir() -> Path:
    """$MEDBENCH_CACHE_DIR, else ~/.cache/medbench (honouring $XDG_CACHE_HOME)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "medbench"


def cache_dir_for(npz_path: Path) -> Path:
    """The folder holding the unpacked arrays and checksum of one npz file.

    Beside the npz (`.medbench-cache/<stem>/`) when that folder is writable, so the
    cache goes where the data goes; otherwise under the user cache folder, keyed by the
    npz's absolute path so files of the same name in different folders do not collide.
    """
    npz_path = Path(npz_path).resolve()
    beside = npz_path.parent / CACHE_FOLDER / npz_path.stem
    if _writable(beside):
        return beside
    key = hashlib.sha1(str(npz_path).encode()).hexdigest()[:12]
    return user_cache_dir() / "arrays" / f"{npz_path.stem}-{key}"


def _writable(folder: Path) -> bool:
    """Whether medbench may create `folder` (or write in it if it exists).

    A folder whose mode has no write bit counts as read-only even for root (who could
    write there anyway): shared data folders are made read-only on purpose.
    """
    existing = folder
    while not existing.exists():
        existing = existing.parent
    mode = existing.stat().st_mode
    return bool(mode & 0o222) and os.access(existing, os.W_OK | os.X_OK)
