"""npz files -> memory-mapped arrays, without ever holding a decompressed member in RAM.

A MedMNIST npz is a zip of compressed `.npy` members; octmnist at 224 px is ~5.5 GB of
uint8 once decompressed, so `np.load` of a member would need the whole array in RAM (and
a tensor copy would double it). Instead each member is stream-decompressed once, in
chunks, into an uncompressed `.npy` file in the npz's cache folder (see
`locations.cache_dir_for`), and memory-mapped on every load. The npz's MD5 is cached in
the same folder's manifest, keyed by the npz's (path, size, mtime), so it is computed once.

The manifest also records each cached `.npy` file's size, mtime and a digest of its bytes
(all of them for files up to `FULL_DIGEST_BYTES`, evenly spaced blocks of larger ones), checked
on every open: a cached array that is not what was unpacked from the npz whose MD5 the
results record is unpacked again, with a warning, and never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medbench.data.locations import CACHE_DIR_ENV, cache_dir_for
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.utils.fsutil import atomic_path

CHUNK_BYTES = 8 << 20
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: each array's mtime and digest
FULL_DIGEST_BYTES = 32 << 20
DIGEST_BLOCKS = 64
DIGEST_BLOCK_BYTES = 64 << 10


def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _source_key(npz_path: Path) -> dict:
    st = npz_path.stat()
    return {"source": str(npz_path.resolve()), "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_manifest(cache_dir: Path) -> dict | None:
    try:
        return json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def open_npz(
    npz_path: str | os.PathLike,
    keys: tuple[str, ...],
    *,
    md5: Callable[[Path], str] = file_md5,
) -> tuple[dict[str, np.ndarray], str]:
    """Return ({key: memory-mapped array} for those of `keys` the npz holds, md5 of the npz).

    Unpacks the npz into its cache folder on first use (or when the npz changed since),
    hashing it with `md5` then only; a file that is not a readable npz raises
    MedbenchError naming it.
    """
    npz_path = Path(npz_path)
    cache_dir = cache_dir_for(npz_path)
    source = _source_key(npz_path)
    manifest = _read_manifest(cache_dir)
    if manifest is None or not _manifest_is_current(manifest, source, cache_dir, keys):
        manifest = _unpack(npz_path, cache_dir, source, keys, md5)
    elif (changed := _changed_array(manifest, cache_dir)) is not None:
        warnings.warn(
            f"the cached {changed} in {cache_dir} is not what was unpacked from {npz_path}; "
            "unpacking the npz again",
            MedbenchWarning,
            stacklevel=2,
        )
        manifest = _unpack(npz_path, cache_dir, source, keys, md5)
    arrays = {key: _map(cache_dir / f"{key}.npy") for key in manifest["arrays"]}
    return arrays, manifest["md5"]


def _manifest_is_current(
    manifest: dict, source: dict, cache_dir: Path, keys: tuple[str, ...]
) -> bool:
    if not manifest or manifest.get("version") != MANIFEST_VERSION:
        return False
    if any(manifest.get(k) != v for k, v in source.items()):
        return False
    if set(manifest.get("requested", ())) != set(keys):
        return False
    return all(
        (cache_dir / f"{key}.npy").is_file()
        and (cache_dir / f"{key}.npy").stat().st_size == meta["npy_bytes"]
        for key, meta in manifest["arrays"].items()
    )


def _changed_array(manifest: dict, cache_dir: Path) -> str | None:
    """The name of the first cached .npy file whose mtime or digest differs from the
    manifest's (edited, replaced, copied over); None when every one is as unpacked."""
    for key, meta in manifest["arrays"].items():
        path = cache_dir / f"{key}.npy"
        try:
            same = path.stat().st_mtime_ns == meta["mtime_ns"] and _digest(path) == meta["digest"]
        except OSError:
            same = False
        if not same:
            return path.name
    return None


def _digest(path: Path) -> str:
    """BLAKE2b of a file's bytes: all of them up to FULL_DIGEST_BYTES, else DIGEST_BLOCKS
    evenly spaced blocks (the header and the end among them), so a check costs at most
    ~4 MB of reading however large the array."""
    digest = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= FULL_DIGEST_BYTES:
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
        else:
            last = size - DIGEST_BLOCK_BYTES
            for i in range(DIGEST_BLOCKS):
                fh.seek(last * i // (DIGEST_BLOCKS - 1))
                digest.update(fh.read(DIGEST_BLOCK_BYTES))
    return digest.hexdigest()


def _map(npy_path: Path) -> np.ndarray:
    # Copy-on-write: a writable array (torch.from_numpy wants one) that never changes the file.
    try:
        return np.load(npy_path, mmap_mode="c", allow_pickle=False)
    except ValueError:  # mmap cannot map a zero-length array
        return np.load(npy_path, allow_pickle=False)


def _unpack(
    npz_path: Path,
    cache_dir: Path,
    source: dict,
    keys: tuple[str, ...],
    md5_of: Callable[[Path], str],
) -> dict:
    try:
        md5 = md5_of(npz_path)
        arrays = {}
        with zipfile.ZipFile(npz_path) as zf:
            members = set(zf.namelist())
            for key in keys:
                if f"{key}.npy" in members:
                    arrays[key] = _unpack_member(zf, f"{key}.npy", cache_dir / f"{key}.npy")
    except MedbenchError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        raise MedbenchError(
            f"{npz_path} is not a readable npz file ({exc}); delete it and download it again"
        ) from exc
    except OSError as exc:
        raise MedbenchError(f"cannot read {npz_path}: {exc.strerror or exc}") from exc
    manifest = {
        "version": MANIFEST_VERSION,
        **source,
        "md5": md5,
        "requested": list(keys),
        "arrays": arrays,
    }
    text = json.dumps(manifest, indent=1)
    _write(lambda: _atomic(cache_dir / MANIFEST, lambda tmp: tmp.write_text(text)), cache_dir)
    return manifest


def _unpack_member(zf: zipfile.ZipFile, member: str, out_path: Path) -> dict:
    with zf.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"{member} uses unsupported .npy format version {version}")
        if dtype.hasobject:
            raise ValueError(f"{member} holds Python objects, not numbers")
        n_bytes = math.prod(shape) * dtype.itemsize
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": fortran_order,
            "shape": shape,
        }

        def copy(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                np.lib.format.write_array_header_1_0(out, header)
                left = n_bytes
                while left:
                    chunk = stream.read(min(CHUNK_BYTES, left))
                    if not chunk:
                        raise ValueError(f"{member} ends {left} bytes early (truncated file?)")
                    out.write(chunk)
                    left -= len(chunk)
            stream.read()  # reach the member's end so zipfile checks its CRC

        _write(lambda: _atomic(out_path, copy), out_path.parent)
        st = out_path.stat()
        return {
            "shape": list(shape),
            "dtype": dtype.str,
            "npy_bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "digest": _digest(out_path),
        }


def _atomic(path: Path, writer: Callable[[Path], object]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)
        tmp.chmod(0o644)  # mkstemp makes 0600; others sharing the data folder must read it


def _write(action: Callable[[], None], folder: Path) -> None:
    try:
        action()
    except MedbenchError as exc:
        raise MedbenchError(f"{exc} (or set ${CACHE_DIR_ENV} for medbench's cache)") from exc
    except OSError as exc:
        raise MedbenchError(
            f"cannot write the array cache in {folder}: {exc.strerror or exc}; "
            f"free some disk space or set ${CACHE_DIR_ENV} to another folder"
        ) from exc
