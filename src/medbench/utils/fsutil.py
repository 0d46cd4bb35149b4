"""Atomic writes: anything that must not be lost goes to a temporary file beside its
destination and is renamed into place, so a reader never sees half a file."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from medbench.errors import DiskWriteError

# A full disk, a full quota, a file over the size limit (RLIMIT_FSIZE).
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; on success rename it over `path`.

    An OSError while the file is written, flushed, synced or renamed (a full disk, a file
    size limit, a folder gone read-only) removes the temporary file (and any folder made for
    it), leaves whatever was at `path` before untouched and is raised as one MedbenchError
    naming `path`."""
    with atomic_files() as files, files.path(path) as tmp:
        yield tmp


@contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """Write files that belong together (a saved ensemble's members, predictions and index)
    so that a reader finds all of them new or all as they were: `files.path(dest)` yields a
    temporary path beside `dest`, and only when the block ends with every file written and
    synced are they renamed into place, in the order they were begun (so the last can be the
    one that says the set is complete). An error anywhere removes every temporary file and
    every folder made for them; an OSError is raised as one DiskWriteError naming its file."""
    files = AtomicFiles()
    try:
        yield files
        files.commit()
    finally:
        files.discard()


class AtomicFiles:
    """The temporary files of one `atomic_files` block (see there)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary, destination)
        self._made_folders: list[Path] = []  # deepest first

    @contextmanager
    def path(self, path: str | os.PathLike) -> Iterator[Path]:
        """A temporary path for `path`, synced when the `with` block ends."""
        path = Path(path)
        tmp = self._temporary(path)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(path, exc) from exc

    def _temporary(self, path: Path) -> Path:
        folder = path.parent
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        self._made_folders = [*missing, *self._made_folders]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise DiskWriteError(
                f"cannot write to {path.parent}: {exc.strerror or exc}; choose a writable folder"
            ) from exc
        os.close(fd)
        self._pending.append((Path(tmp), path))
        return Path(tmp)

    def commit(self) -> None:
        """Rename every temporary file into place, in the order they were begun."""
        while self._pending:
            tmp, path = self._pending[0]
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise write_error(path, exc) from exc
            self._pending.pop(0)
        self._made_folders = []

    def discard(self) -> None:
        """Remove the temporary files not renamed yet, and the folders made for them."""
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending = []
        for folder in self._made_folders:
            with contextlib.suppress(OSError):  # not empty (another writer's file): keep it
                folder.rmdir()
        self._made_folders = []


def write_error(path: str | os.PathLike, exc: OSError) -> DiskWriteError:
    """The one-line error for an OSError met while writing `path`."""
    reason = (exc.strerror or str(exc)).lower()
    if exc.errno in _SPACE_ERRNOS:
        return DiskWriteError(
            f"cannot write {path}: {reason}; free some disk space (or raise the file size "
            "limit) and run again; nothing was written and any earlier file is intact"
        )
    return DiskWriteError(
        f"cannot write {path}: {reason}; nothing was written and any earlier file is intact"
    )


def check_free_space(path: str | os.PathLike, n_bytes: int) -> None:
    """Refuse, before writing, `n_bytes` that the disk holding `path`'s folder cannot take."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # no such folder yet, or not a local disk: let the write itself tell
        return
    if free < n_bytes:
        raise DiskWriteError(
            f"cannot write {path}: no space left on device ({n_bytes / 1e6:.1f} MB needed, "
            f"{free / 1e6:.1f} MB free); free some disk space and run again; nothing was "
            "written and any earlier file is intact"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], Any]) -> Path:
    """Call `writer(fh)` on a binary file handle and rename the result into `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically, refusing at once data the disk has no room for."""
    check_free_space(path, len(data))
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """`obj` as the indented JSON text medbench writes (numpy values and Paths made plain)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def atomic_savefig(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out a matplotlib figure and write it as a PNG, atomically (rendered in memory
    first, so a full disk is met by one write of known size)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and Paths appear in results; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
