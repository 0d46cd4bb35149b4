"""The results store: one SQLite database (`results.sqlite`) per benchmark folder.

One row per grid cell (dataset, size, model, seed, config hash). Several processes may work
on the same folder at once: a cell is claimed inside a `BEGIN IMMEDIATE` transaction, so
exactly one process gets it. A "running" cell whose owner is gone (same host and its pid is
dead, or its heartbeat is older than `stale_seconds`) may be claimed again; the new owner
resumes it from its checkpoint.

Statuses: pending -> running -> finished | failed. `attempts` counts claims.

The store also keeps what makes its cells one grid: the grid's run length (`grid_length`:
epochs, per-run or total budget), fixed when the grid is registered, and the wall seconds
each cell's attempts have spent (`seconds_spent` for ended attempts, `attempt_seconds` for
the current one, refreshed with its heartbeat), so a resumed grid knows what is left of
its total budget.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.results import RunResults

STORE_NAME = "results.sqlite"
SCHEMA_VERSION = 2  # 2: grid_length in meta; seconds_spent, attempt_seconds per cell
STATUSES = ("pending", "running", "finished", "failed")
DEFAULT_STALE_SECONDS = 600.0

_COLUMNS = """
    key TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    size INTEGER NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    claimed_host TEXT,
    claimed_pid INTEGER,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    config_json TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    results_path TEXT,
    test_acc REAL,
    test_auc REAL,
    val_acc REAL,
    val_auc REAL,
    n_params INTEGER,
    gflops REAL,
    efficiency REAL,
    train_seconds REAL,
    collapsed INTEGER,
    flags_json TEXT,
    error TEXT,
    seconds_spent REAL NOT NULL DEFAULT 0,
    attempt_seconds REAL NOT NULL DEFAULT 0
"""
# What SQLite says when the disk, not medbench, refused a write.
_DISK_ERRORS = ("disk is full", "disk I/O error", "readonly database", "unable to open")
# Columns added since schema 1, added to a store of schema 1 when it is opened.
_ADDED_COLUMNS = {
    "seconds_spent": "REAL NOT NULL DEFAULT 0",
    "attempt_seconds": "REAL NOT NULL DEFAULT 0",
}


@dataclass(frozen=True)
class Owner:
    """Who works on a cell: the host name and process id."""

    host: str
    pid: int

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid())

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a killed child nobody has reaped yet is still listed, as state Z.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a store of an earlier schema to this one (inside the schema transaction)."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(cells)")}
    for name, kind in _ADDED_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE cells ADD COLUMN {name} {kind}")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def duration_flag(seconds: float) -> str:
    """Seconds as a duration the command line reads back: 3600 -> '1h', 90 -> '90s'."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def round_up_duration(seconds: float) -> str:
    """At least `seconds`, as a flag a person would type: whole hours from 2 hours, whole
    minutes from 2 minutes, else whole seconds (107748 -> '30h', 3200 -> '54m')."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{math.ceil(seconds / size)}{unit}"
    return f"{math.ceil(seconds)}s"


def describe_length(length: dict[str, Any]) -> str:
    """A grid's run length as the flags that give it, e.g. '--total-time-budget 6m'."""
    parts = []
    if length.get("epochs") is not None:
        parts.append(f"--epochs {length['epochs']}")
    if length.get("time_budget_seconds") is not None:
        parts.append(f"--time-budget {duration_flag(length['time_budget_seconds'])}")
    if length.get("total_time_budget_seconds") is not None:
        parts.append(f"--total-time-budget {duration_flag(length['total_time_budget_seconds'])}")
    return " ".join(parts) or "no length flags (the recipe's epochs)"


class ResultsStore:
    """The SQLite results store of one benchmark folder.

    Each method opens its own short connection, so a store object is safe to share between
    threads (the heartbeat thread) and cheap to create in every process.
    """

    def __init__(self, folder: str | os.PathLike, *, create: bool = True) -> None:
        """Open (with `create`, make) the store of `folder` for reading and writing; without
        `create`, open an existing store for reading only: then nothing is ever written to
        it, and a store in a read-only folder (or of an older schema) is read as it is."""
        self.folder = Path(folder)
        self.path = self.folder / STORE_NAME
        self.read_only = not create
        self._read_uri: str | None = None
        if self.read_only:
            self._open_for_reading()
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise MedbenchError(
                f"cannot open results store {self.path} for writing: {exc}; it was left as it "
                "is (it may hold a study's results): free disk space or fix its permissions, "
                "or choose another --out folder for a new study"
            ) from exc
        except OSError as exc:
            raise MedbenchError(
                f"cannot create {self.folder}: {exc.strerror or exc}; choose a writable --out folder"
            ) from exc

    def _open_for_reading(self) -> None:
        """Find a read-only way in: `mode=ro`, or, where SQLite cannot make the WAL index
        beside the file (a read-only folder), `immutable=1`, which reads the file alone."""
        if not self.path.is_file():
            raise MedbenchError(
                f"no results store {self.path}; run 'medbench benchmark --out {self.folder}' first"
            )
        base = "file:" + urllib.parse.quote(str(self.path.resolve()))
        error: sqlite3.DatabaseError | None = None
        for uri in (f"{base}?mode=ro", f"{base}?mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
                try:
                    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                finally:
                    conn.close()
            except sqlite3.DatabaseError as exc:
                error = exc
                if not isinstance(exc, sqlite3.OperationalError):
                    break  # not a database at all: immutable will not help
                continue
            self._read_uri = uri
            return
        raise MedbenchError(
            f"cannot read results store {self.path}: {error}; it was left as it is: check that "
            "it is the results.sqlite a 'medbench benchmark' wrote and that you may read it"
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _create_schema(self, timeout: float = 60.0) -> None:
        """Switch the file to WAL and create the tables, however many processes do it at once.

        SQLite answers "database is locked" at once, without waiting in the busy handler, when
        two connections race to switch a new file to WAL or to upgrade a read to a write (the
        handler would deadlock there). So the switch is retried on a fresh connection, and the
        tables are created inside a `BEGIN IMMEDIATE` transaction, which does wait.
        """
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            conn = self._connect()
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"CREATE TABLE IF NOT EXISTS cells ({_COLUMNS})")
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                _upgrade(conn)
                conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() + delay > deadline:
                    raise
            finally:
                conn.close()
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, 0.5)

    def _meta(self, conn: sqlite3.Connection, name: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else row[0]

    def _connect(self) -> sqlite3.Connection:
        if self._read_uri is not None:
            conn = sqlite3.connect(self._read_uri, uri=True, timeout=60.0, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: takes the write lock at once, so check-then-update is atomic.

        A write the disk refuses (full, read-only, failing) is rolled back by SQLite, so the
        store keeps what it held, and is raised as one MedbenchError."""
        if self.read_only:
            raise MedbenchError(f"results store {self.path} was opened for reading only")
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not any(words in str(exc) for words in _DISK_ERRORS):
                raise
            raise MedbenchError(
                f"cannot write results store {self.path}: {exc}; it keeps what it held before: "
                "free some disk space (or make it writable) and run again"
            ) from exc
        finally:
            conn.close()

    def _rel(self, path: str | os.PathLike) -> str:
        """Paths inside the folder are stored relative to it, so the folder can be moved."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.folder.resolve()))
        except ValueError:
            return str(path.resolve())

    def _abs(self, path: str | None) -> str | None:
        return None if not path else str(self.folder / path)

    # -- writing ----------------------------------------------------------------------------

    @staticmethod
    def _insert(conn: sqlite3.Connection, cells: Iterable[dict[str, Any]], retry: bool) -> int:
        now = time.time()
        added = 0
        for c in cells:
            cur = conn.execute(
                "INSERT OR IGNORE INTO cells (key, dataset, size, model, seed, config_hash, "
                "status, created_at, config_json, run_dir) VALUES (?,?,?,?,?,?,'pending',?,?,?)",
                (
                    c["key"],
                    c["dataset"],
                    int(c["size"]),
                    c["model"],
                    int(c["seed"]),
                    c["config_hash"],
                    now,
                    json.dumps(c["config"], sort_keys=True),
                    str(c["run_dir"]),
                ),
            )
            added += cur.rowcount
            if retry:
                conn.execute(
                    "UPDATE cells SET status='pending', error=NULL WHERE key=? AND status='failed'",
                    (c["key"],),
                )
        return added

    def register_grid(
        self,
        cells: Sequence[dict[str, Any]],
        length: dict[str, Any],
        *,
        retry_failed: bool = False,
    ) -> int:
        """Add a grid's cells (as `add_cells`) under its run `length`, in one transaction.

        A store whose grid has started (a cell was ever claimed) keeps its length: another
        one raises MedbenchError naming the folder and the way out, and so does adding new
        cells to a grid that shares a total budget (it would change every cell's share).
        A grid that never started, registered with another length (or before lengths were
        kept), is replaced: its cells, none of which anyone claimed, are dropped first."""
        with self._transaction() as conn:
            known = json.loads(self._meta(conn, "grid_length") or "null")
            conflict = self._conflict(conn, cells, known, length)
            if conflict is not None:
                raise conflict
            if not self._started(conn) and known != length:
                conn.execute("DELETE FROM cells")
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('grid_length', ?)",
                (json.dumps(length, sort_keys=True),),
            )
            return self._insert(conn, cells, retry_failed)

    def check_grid(self, cells: Sequence[dict[str, Any]], length: dict[str, Any]) -> None:
        """Raise the MedbenchError `register_grid` would raise for this grid; write nothing."""
        conn = self._connect()
        try:
            known = json.loads(self._meta(conn, "grid_length") or "null")
            conflict = self._conflict(conn, cells, known, length)
        finally:
            conn.close()
        if conflict is not None:
            raise conflict

    @staticmethod
    def _started(conn: sqlite3.Connection) -> bool:
        return bool(conn.execute("SELECT COUNT(*) FROM cells WHERE attempts > 0").fetchone()[0])

    def _conflict(
        self,
        conn: sqlite3.Connection,
        cells: Sequence[dict[str, Any]],
        known: dict[str, Any] | None,
        length: dict[str, Any],
    ) -> MedbenchError | None:
        """Why this grid may not join the store's started grid; None when it may."""
        if known is None or not self._started(conn):
            return None
        if known != length:
            return MedbenchError(
                f"{self.folder} holds a grid that runs with {describe_length(known)}, not "
                f"{describe_length(length)}: one report cannot compare runs of different "
                f"lengths; rerun with {describe_length(known)}, or choose a new --out"
            )
        have = {r[0] for r in conn.execute("SELECT key FROM cells")}
        if known.get("total_time_budget_seconds") is not None and any(
            c["key"] not in have for c in cells
        ):
            return MedbenchError(
                f"{self.folder} holds a grid of {len(have)} runs sharing "
                f"{describe_length(known)}; adding runs to it would change every run's "
                "share: choose a new --out for the new runs"
            )
        return None

    def add_cells(self, cells: Iterable[dict[str, Any]], *, retry_failed: bool = False) -> int:
        """Insert planned cells (dicts with key, dataset, size, model, seed, config_hash,
        config, run_dir) that are not in the store yet; return how many were new. With
        `retry_failed`, failed cells among them go back to pending."""
        with self._transaction() as conn:
            return self._insert(conn, cells, retry_failed)

    def claim(
        self,
        keys: Iterable[str],
        owner: Owner | None = None,
        *,
        stale_seconds: float = DEFAULT_STALE_SECONDS,
    ) -> dict[str, Any] | None:
        """Claim the first of `keys` that is pending or abandoned; return its row, or None.

        Abandoned = running, and either owned by a dead process on this host or with a
        heartbeat older than `stale_seconds`. Cells are tried in the order of `keys`.
        """
        owner = owner or Owner.current()
        keys = list(keys)
        now = time.time()
        with self._transaction() as conn:
            rows = {
                r["key"]: r
                for r in conn.execute(
                    "SELECT key, status, claimed_host, claimed_pid, heartbeat FROM cells "
                    "WHERE status IN ('pending', 'running')"
                )
            }
            for key in keys:
                row = rows.get(key)
                if row is None or (
                    row["status"] == "running" and not self._abandoned(row, now, stale_seconds)
                ):
                    continue
                conn.execute(
                    "UPDATE cells SET status='running', claimed_host=?, claimed_pid=?, heartbeat=?, "
                    "started_at=?, attempts=attempts+1, error=NULL, "
                    "seconds_spent=seconds_spent+attempt_seconds, attempt_seconds=0 WHERE key=?",
                    (owner.host, owner.pid, now, now, key),
                )
                return dict(conn.execute("SELECT * FROM cells WHERE key=?", (key,)).fetchone())
        return None

    @staticmethod
    def _abandoned(row: sqlite3.Row, now: float, stale_seconds: float) -> bool:
        if row["heartbeat"] is None or now - row["heartbeat"] > stale_seconds:
            return True
        same_host = row["claimed_host"] == socket.gethostname()
        return same_host and not process_alive(int(row["claimed_pid"] or 0))

    def heartbeat(
        self, key: str, owner: Owner | None = None, *, attempt_seconds: float | None = None
    ) -> bool:
        """Refresh the heartbeat of a cell this owner holds (and the wall seconds its
        attempt has spent so far, when given); False if it lost the cell."""
        owner = owner or Owner.current()
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE cells SET heartbeat=?, attempt_seconds=COALESCE(?, attempt_seconds) "
                "WHERE key=? AND status='running' AND claimed_host=? AND claimed_pid=?",
                (time.time(), attempt_seconds, key, owner.host, owner.pid),
            )
            return cur.rowcount == 1

    def spend(self, key: str, attempt_seconds: float) -> None:
        """Record the wall seconds the cell's current attempt has spent (when it ends)."""
        with self._transaction() as conn:
            conn.execute("UPDATE cells SET attempt_seconds=? WHERE key=?", (attempt_seconds, key))

    def finish(self, key: str, results: RunResults, results_path: str | os.PathLike) -> None:
        """Record a finished run from its results."""
        row = results.flat_row()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE cells SET status='finished', finished_at=?, heartbeat=?, results_path=?, "
                "test_acc=?, test_auc=?, val_acc=?, val_auc=?, n_params=?, gflops=?, efficiency=?, "
                "train_seconds=?, collapsed=?, flags_json=?, error=NULL WHERE key=?",
                (
                    time.time(),
                    time.time(),
                    self._rel(results_path),
                    row["test_acc"],
                    row["test_auc"],
                    row["val_acc"],
                    row["val_auc"],
                    row["n_params"],
                    row["gflops"],
                    row["efficiency"],
                    row["train_seconds"],
                    int(row["collapsed"]),
                    json.dumps(row["flags"]),
                    key,
                ),
            )

    def fail(self, key: str, message: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE cells SET status='failed', finished_at=?, error=? WHERE key=?",
                (time.time(), message, key),
            )

    def release(self, key: str, owner: Owner | None = None) -> None:
        """Hand a claimed cell back (pending) so another run can take it, e.g. after Ctrl-C."""
        owner = owner or Owner.current()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE cells SET status='pending', claimed_host=NULL, claimed_pid=NULL, "
                "heartbeat=NULL WHERE key=? AND status='running' AND claimed_host=? AND claimed_pid=?",
                (key, owner.host, owner.pid),
            )

    # -- reading ----------------------------------------------------------------------------

    def rows(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All rows (or those of `keys`, in that order), flags decoded into a list."""
        conn = self._connect()
        try:
            all_rows = [
                dict(r) for r in conn.execute("SELECT * FROM cells ORDER BY created_at, key")
            ]
        except sqlite3.OperationalError as exc:
            if not (self.read_only and "no such table" in str(exc)):
                raise
            all_rows = []  # a store read as it is, before any grid was registered
        finally:
            conn.close()
        for r in all_rows:
            for name in _ADDED_COLUMNS:  # a store of an earlier schema, read as it is
                r.setdefault(name, 0.0)
            r["flags"] = json.loads(r.pop("flags_json") or "[]")
            r["config"] = json.loads(r.pop("config_json") or "{}")
            r["collapsed"] = None if r["collapsed"] is None else bool(r["collapsed"])
            r["run_dir"], r["results_path"] = self._abs(r["run_dir"]), self._abs(r["results_path"])
        if keys is None:
            return all_rows
        by_key = {r["key"]: r for r in all_rows}
        return [by_key[k] for k in keys if k in by_key]

    def grid_length(self) -> dict[str, Any] | None:
        """The run length the grid was registered with (see `register_grid`); None for a
        store written before lengths were kept, or with no grid yet."""
        conn = self._connect()
        try:
            return json.loads(self._meta(conn, "grid_length") or "null")
        except sqlite3.OperationalError as exc:
            if not (self.read_only and "no such table" in str(exc)):
                raise
            return None
        finally:
            conn.close()

    def seconds_spent(self, keys: Iterable[str] | None = None) -> float:
        """Wall seconds the cells' attempts have spent (all cells, or those of `keys`)."""
        rows = self.rows(keys)
        return sum(r["seconds_spent"] + r["attempt_seconds"] for r in rows)

    def counts(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """Number of cells per status (all four statuses present)."""
        out = dict.fromkeys(STATUSES, 0)
        for r in self.rows(keys):
            out[r["status"]] += 1
        return out
