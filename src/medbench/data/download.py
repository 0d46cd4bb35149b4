"""Downloading official MedMNIST files: resumable, retried, verified, renamed into place.

Bytes go to `<name>.npz.part` beside the destination; only a complete file whose MD5
matches the catalogue is renamed to the official name, so a failed or corrupt download
never leaves a file that later passes for a good one. A `.part` left by an interrupted
download is resumed with an HTTP Range request where the server allows it (206) and
restarted from scratch where it does not (200).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from medbench.data.arrays import CHUNK_BYTES, file_md5
from medbench.data.catalogue import dataset_info
from medbench.data.locations import DATA_DIR_ENV, dataset_path, missing_data_dir
from medbench.errors import MedbenchError
from medbench.utils.fsutil import write_error

MIRROR_ENV = "MEDBENCH_MIRROR"
# Answers that retrying will not change.
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}


class _Retry(Exception):
    """A failed attempt worth retrying (network error, short body, bad checksum...)."""


def download_url(name: str, size: int = 28, mirror: str | None = None) -> str:
    """The official URL, or `<mirror>/<official file name>` when a mirror is given
    (argument, else $MEDBENCH_MIRROR): a mirror is any folder of the official files
    served over http(s) or file://."""
    info = dataset_info(name)
    from_env = mirror is None
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return info.url(size)
    _check_mirror(mirror, f"${MIRROR_ENV}" if from_env else "--mirror")
    return f"{mirror.rstrip('/')}/{info.file_name(size)}"


def _check_mirror(mirror: str, given_by: str) -> None:
    """A MedbenchError unless `mirror` is an http(s) URL with a host or a file:// URL."""
    parts = urllib.parse.urlsplit(mirror)
    web = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not (web or (parts.scheme == "file" and parts.path)):
        raise MedbenchError(
            f"{given_by} {mirror!r} is not a mirror URL; give http(s)://host/folder, or "
            f"file:///absolute/folder for a local folder of the official files"
        )


def download_dataset(
    name: str,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    retries: int = 3,
    backoff_seconds: float = 1.0,
    progress: bool = True,
    timeout_seconds: float = 60,
    sleep: Callable[[float], object] = time.sleep,
) -> Path:
    """Download `name` at `size` into the data folder and return its path.

    An existing file is returned as it is, never downloaded over. Failed attempts are
    retried `retries` times, waiting backoff_seconds * 2**attempt in between (by `sleep`).
    """
    info = dataset_info(name)
    if retries < 0:
        raise MedbenchError(f"--retries must not be negative, not {retries}")
    path = dataset_path(name, size, data_dir)
    if path.exists():
        return path
    _refuse_symlink_loop(path)
    url = download_url(name, size, mirror)
    _make_folder(path.parent, named=data_dir is not None and str(data_dir) != "")
    part = path.with_name(path.name + ".part")
    expected_md5 = info.md5(size)
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_seconds * 2 ** (attempt - 1))
        try:
            _fetch(url, part, progress=progress, timeout_seconds=timeout_seconds)
            _verify(part, expected_md5)
            os.replace(part, path)
            return path
        except _Retry as exc:
            last_error = str(exc)
        except urllib.error.HTTPError as exc:
            if exc.code in _PERMANENT_HTTP:
                raise MedbenchError(
                    f"cannot download {info.file_name(size)}: {url} answered HTTP {exc.code} "
                    f"{exc.reason}; check the --mirror URL, or put the file in {path.parent} (or point "
                    f"--data-dir / ${DATA_DIR_ENV} at a folder that holds it)"
                ) from exc
            last_error = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            last_error = f"{type(exc).__name__}: {reason}"
    raise MedbenchError(
        f"cannot download {info.file_name(size)} from {url} after {retries + 1} attempts "
        f"({last_error}); check the network, try --mirror URL, copy the file into "
        f"{path.parent} yourself, or point --data-dir / ${DATA_DIR_ENV} at a folder that "
        "already holds it"
    )


def ensure_dataset(
    name: str,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """The path of `name`'s npz at `size`, downloading it first when it is missing (and
    `download`). A data folder named by `data_dir` that does not exist is refused before
    anything is created (see `missing_data_dir`)."""
    path = dataset_path(name, size, data_dir)
    if path.exists():
        return path
    refused = missing_data_dir(data_dir)
    if refused is not None:
        raise refused
    if not download:
        raise MedbenchError(
            f"{path.name} is not in {path.parent}; run 'medbench download {dataset_info(name).name} "
            f"--size {size}' or point --data-dir / ${DATA_DIR_ENV} at a folder holding it"
        )
    return download_dataset(name, size, data_dir, progress=progress)


def _refuse_symlink_loop(path: Path) -> None:
    """A MedbenchError where `path` or a folder above it is a symbolic link that leads back
    to itself (exists() says False there, and a download could never be written)."""
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            try:
                link.resolve(strict=True)
            except RuntimeError:  # Python 3.11-3.12 raise this for a loop
                pass
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    continue
            else:
                continue
            raise MedbenchError(
                f"{link} is a symbolic link loop (it points back to itself); remove or fix "
                f"the link, or choose another data folder with --data-dir or ${DATA_DIR_ENV}"
            )


def _make_folder(folder: Path, *, named: bool) -> None:
    """Create the data folder for a download. A folder named by --data-dir is created only
    where its parent exists: asked to download, medbench makes the folder, not a path."""
    if named and not folder.exists() and not folder.parent.exists():
        raise MedbenchError(
            f"cannot create the data folder {folder}: its parent {folder.parent} does not "
            "exist (a mistyped --data-dir?); create it first, or choose another with "
            f"--data-dir or ${DATA_DIR_ENV}"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedbenchError(
            f"cannot create the data folder {folder}: {exc.strerror or exc}; "
            "choose a writable one with --data-dir or $MEDBENCH_DATA_DIR"
        ) from exc


def _verify(part: Path, expected_md5: str) -> None:
    actual = file_md5(part)
    if actual != expected_md5:
        part.unlink(missing_ok=True)  # bad bytes cannot be resumed from
        raise _Retry(f"MD5 {actual} does not match the official {expected_md5}")


def _fetch(url: str, part: Path, *, progress: bool, timeout_seconds: float) -> None:
    """One attempt: append to (or restart) `part` until the server's body is complete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medbench"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_seconds)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part is already whole (or longer): check it
            return
        raise
    with response:
        received, body_bytes = _write_body(response, part, offset, progress)
    if body_bytes is not None and received < body_bytes:
        raise _Retry(f"connection closed after {received} of {body_bytes} bytes")


def _write_body(response, part: Path, offset: int, progress: bool) -> tuple[int, int | None]:
    """Append the response to `part` (or rewrite it, where the server ignored the Range
    request); (bytes received, bytes the server promised or None)."""
    status = getattr(response, "status", None) or 200  # file:// has no status
    if status == 206 and _range_start(response.headers.get("Content-Range")) == offset:
        mode = "ab"
    else:  # the server ignored the Range request: start again from byte 0
        offset, mode = 0, "wb"
    length = response.headers.get("Content-Length")
    body_bytes = int(length) if length and length.isdigit() else None
    total = offset + body_bytes if body_bytes is not None else None
    received = 0
    with (
        _part_file(part, mode) as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        while chunk := response.read(CHUNK_BYTES):
            try:
                out.write(chunk)
            except OSError as exc:
                raise write_error(part, exc) from exc
            received += len(chunk)
            bar.update(len(chunk))
    return received, body_bytes


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def _part_file(part: Path, mode: str):
    """`part` open for writing; an OSError opening or closing it is a write error (a full
    disk, no permission), not a network one to retry."""
    try:
        out = open(part, mode)  # noqa: SIM115 - closed below, its error told apart
    except OSError as exc:
        raise write_error(part, exc) from exc
    try:
        yield out
    finally:
        try:
            out.close()
        except OSError as exc:
            raise write_error(part, exc) from exc
