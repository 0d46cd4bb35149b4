"""The results store of a benchmark grid: one row per grid cell (dataset, size, model,
seed, config hash), in a database reached through SQLAlchemy.

By default the store is one SQLite file in the benchmark folder (`OUT/results.sqlite`),
shared by the processes of one machine. Given a database URL (`--storage
postgresql+psycopg://user@host/db`), it lives on a PostgreSQL server and is shared by
processes on any number of machines; the folder then records where (`OUT/store.json`, the
URL without its password), so later commands on the folder find it. One database (or
schema) holds one grid.

Several processes may work on one grid at once; each cell is claimed by exactly one. On
SQLite a claim runs inside a `BEGIN IMMEDIATE` transaction (one writer at a time); on
PostgreSQL the claimed row is locked with `SELECT ... FOR UPDATE SKIP LOCKED`, so claims
of different cells do not wait for each other. A "running" cell whose owner is gone (see
`medbench.runs.leases.abandoned`: a stale heartbeat, or a dead pid on this host) may be claimed
again; the new owner resumes it from its checkpoint.

Statuses: pending -> running -> finished | failed. `attempts` counts claims.

The store also keeps what makes its cells one grid: the grid's run length (`grid_length`:
epochs, per-run or total budget), fixed when the grid is registered, and the wall seconds
each cell's attempts have spent (`seconds_spent` for ended attempts, `attempt_seconds` for
the current one, refreshed with its heartbeat), so a resumed grid knows what is left of
its total budget.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection, Engine, RowMapping

from medbench.errors import MedbenchError
from medbench.runs.leases import DEFAULT_STALE_SECONDS, Owner, abandoned, process_alive
from medbench.runs.results import RunResults
from medbench.runs.store_db import (
    LOCATION_NAME,
    STORE_NAME,
    first_line,
    has_store,
    public_url,
    recorded_url,
    server_engine,
    server_type,
    sqlite_engine,
)
from medbench.utils.fsutil import atomic_write_json

__all__ = [
    "DEFAULT_STALE_SECONDS",
    "LOCATION_NAME",
    "STORE_NAME",
    "Owner",
    "ResultsStore",
    "has_store",
    "process_alive",
    "public_url",
]

SCHEMA_VERSION = 2  # 2: grid_length in meta; seconds_spent, attempt_seconds per cell
STATUSES = ("pending", "running", "finished", "failed")

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
# What the database says when the disk, not medbench, refused a write.
_DISK_ERRORS = (
    "disk is full",
    "disk I/O error",
    "readonly database",
    "unable to open",
    "No space left",
)
# Columns added since schema 1, added to a store of schema 1 when it is opened.
_ADDED_COLUMNS = {
    "seconds_spent": "REAL NOT NULL DEFAULT 0",
    "attempt_seconds": "REAL NOT NULL DEFAULT 0",
}
# Any constant: the key of PostgreSQL's advisory lock under which the schema is made.
_SCHEMA_LOCK = 7_140_295_306


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
    """The results store of one benchmark folder: its SQLite file, or a database on a
    server (`url`).

    Each method opens its own short connection, so a store object is safe to share between
    threads (the heartbeat thread) and cheap to create in every process.
    """

    def __init__(
        self, folder: str | os.PathLike[str], *, create: bool = True, url: str | None = None
    ) -> None:
        """Open (with `create`, make) the store of `folder` for reading and writing; without
        `create`, open an existing store for reading only: then nothing is ever written to
        it, and a store in a read-only folder (or of an older schema) is read as it is.
        `url` (an SQLAlchemy URL) puts the store on a database server; without it, the
        folder's recorded server (`OUT/store.json`), else its SQLite file."""
        self.folder = Path(folder)
        self.path = self.folder / STORE_NAME
        self.read_only = not create
        self.url = self._location(url)
        self.server = self.url is not None
        self.where = public_url(self.url) if self.url else str(self.path)
        if self.read_only:
            self._open_for_reading()
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.engine = server_engine(self.url) if self.url else self._file_engine()
            self._create_schema()
            if self.url:
                self._record_location()
        except (sqlite3.DatabaseError, sqlalchemy.exc.DBAPIError) as exc:
            raise self._open_error(exc) from exc
        except OSError as exc:
            raise MedbenchError(
                f"cannot create {self.folder}: {exc.strerror or exc}; choose a writable --out folder"
            ) from exc

    @property
    def name(self) -> str:
        """How the progress names the store: its file name, or the server's URL."""
        return self.where if self.server else self.path.name

    def _location(self, url: str | None) -> str | None:
        """The database URL this store lives at (None: the folder's SQLite file); another
        URL than the one the folder's grid was recorded with is refused."""
        known = recorded_url(self.folder)
        if url is None or known is None:
            return url or known
        if public_url(url) != public_url(known):
            raise MedbenchError(
                f"{self.folder}'s grid is stored in {public_url(known)}, not {public_url(url)}; "
                f"give --storage {public_url(known)}, or choose a new --out"
            )
        return url

    def _record_location(self) -> None:
        path = self.folder / LOCATION_NAME
        if recorded_url(self.folder) is None:
            atomic_write_json(path, {"url": public_url(self.url or "")})

    def _open_error(self, exc: BaseException) -> MedbenchError:
        if self.server:
            return MedbenchError(
                f"cannot open results store {self.where}: {first_line(exc)}; check --storage "
                "(the server, the database and your rights on it)"
            )
        return MedbenchError(
            f"cannot open results store {self.path} for writing: {first_line(exc)}; it was "
            "left as it is (it may hold a study's results): free disk space or fix its "
            "permissions, or choose another --out folder for a new study"
        )

    def _file_engine(self) -> Engine:
        path = self.path
        return sqlite_engine(lambda: sqlite3.connect(path, timeout=60.0, isolation_level=None))

    def _open_for_reading(self) -> None:
        """Find a read-only way in. A server is read through its URL. An SQLite file is
        read with `mode=ro`, or, where SQLite cannot make the WAL index beside the file (a
        read-only folder), `immutable=1`, which reads the file alone."""
        if self.server:
            self.engine = server_engine(self.url or "")
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except sqlalchemy.exc.DBAPIError as exc:
                raise self._open_error(exc) from exc
            return
        if not self.path.is_file():
            raise MedbenchError(
                f"no results store {self.path}; run 'medbench benchmark --out {self.folder}' first"
            )
        self.engine = self._read_only_engine()

    def _read_only_engine(self) -> Engine:
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
            return sqlite_engine(
                functools.partial(
                    sqlite3.connect, uri, uri=True, timeout=60.0, isolation_level=None
                )
            )
        raise MedbenchError(
            f"cannot read results store {self.path}: {error}; it was left as it is: check that "
            "it is the results.sqlite a 'medbench benchmark' wrote and that you may read it"
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _create_schema(self, timeout: float = 60.0) -> None:
        """Create the tables (and switch an SQLite file to WAL), however many processes do
        it at once.

        SQLite answers "database is locked" at once, without waiting in the busy handler, when
        two connections race to switch a new file to WAL or to upgrade a read to a write (the
        handler would deadlock there). So the switch is retried on a fresh connection, and the
        tables are created inside a `BEGIN IMMEDIATE` transaction, which does wait. On
        PostgreSQL the tables are made under an advisory lock: two `CREATE TABLE IF NOT
        EXISTS` at once would otherwise collide."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                with self.engine.connect() as conn:
                    self._make_tables(conn)
                return
            except sqlalchemy.exc.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if self.server or not busy or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, 0.5)

    def _make_tables(self, conn: Connection) -> None:
        columns = _COLUMNS
        if self.server:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            columns = server_type(_COLUMNS)
        else:
            if conn.exec_driver_sql("PRAGMA journal_mode").scalar_one().lower() != "wal":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS cells ({columns})"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)"))
        self._upgrade(conn)
        conn.commit()

    def _upgrade(self, conn: Connection) -> None:
        """Bring a store of an earlier schema to this one (inside the schema transaction)."""
        have = {c["name"] for c in sqlalchemy.inspect(conn).get_columns("cells")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                kind = server_type(kind) if self.server else kind
                conn.execute(text(f"ALTER TABLE cells ADD COLUMN {name} {kind}"))
        self._set_meta(conn, "schema_version", str(SCHEMA_VERSION))

    @staticmethod
    def _set_meta(conn: Connection, name: str, value: str) -> None:
        conn.execute(
            text(
                "INSERT INTO meta (name, value) VALUES (:name, :value) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            ),
            {"name": name, "value": value},
        )

    @staticmethod
    def _meta(conn: Connection, name: str) -> str | None:
        return conn.execute(text("SELECT value FROM meta WHERE name=:n"), {"n": name}).scalar()

    @contextmanager
    def _reading(self) -> Iterator[Connection | None]:
        """A connection to read with; None for a store read as it is before any grid was
        registered (no tables yet)."""
        with self.engine.connect() as conn:
            if self.read_only and not sqlalchemy.inspect(conn).has_table("cells"):
                yield None
            else:
                yield conn

    @contextmanager
    def _transaction(self, *, whole_grid: bool = False) -> Iterator[Connection]:
        """A write transaction. On SQLite it takes the write lock at once (`BEGIN
        IMMEDIATE`), so check-then-update is atomic; on PostgreSQL rows are locked where
        they are claimed, and `whole_grid` locks the cells against writers (registering).

        A write the disk refuses (full, read-only, failing) is rolled back, so the store
        keeps what it held, and is raised as one MedbenchError."""
        if self.read_only:
            raise MedbenchError(f"results store {self.where} was opened for reading only")
        try:
            with self.engine.connect() as conn:
                if not self.server:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif whole_grid:
                    conn.execute(text("LOCK TABLE cells IN EXCLUSIVE MODE"))
                yield conn  # an exception here leaves the block: SQLAlchemy rolls back
                conn.commit()
        except sqlalchemy.exc.OperationalError as exc:
            if not any(words in str(exc.orig) for words in _DISK_ERRORS):
                raise
            raise MedbenchError(
                f"cannot write results store {self.where}: {first_line(exc)}; it keeps what "
                "it held before: free some disk space (or make it writable) and run again"
            ) from exc

    def _rel(self, path: str | os.PathLike[str]) -> str:
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
    def _insert(conn: Connection, cells: Iterable[dict[str, Any]], retry: bool) -> int:
        now = time.time()
        added = 0
        for c in cells:
            cur = conn.execute(
                text(
                    "INSERT INTO cells (key, dataset, size, model, seed, config_hash, status, "
                    "created_at, config_json, run_dir) VALUES (:key, :dataset, :size, :model, "
                    ":seed, :config_hash, 'pending', :now, :config, :run_dir) "
                    "ON CONFLICT (key) DO NOTHING"
                ),
                {
                    "key": c["key"],
                    "dataset": c["dataset"],
                    "size": int(c["size"]),
                    "model": c["model"],
                    "seed": int(c["seed"]),
                    "config_hash": c["config_hash"],
                    "now": now,
                    "config": json.dumps(c["config"], sort_keys=True),
                    "run_dir": str(c["run_dir"]),
                },
            )
            added += max(0, cur.rowcount)
            if retry:
                conn.execute(
                    text(
                        "UPDATE cells SET status='pending', error=NULL "
                        "WHERE key=:key AND status='failed'"
                    ),
                    {"key": c["key"]},
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
        with self._transaction(whole_grid=True) as conn:
            known = json.loads(self._meta(conn, "grid_length") or "null")
            conflict = self._conflict(conn, cells, known, length)
            if conflict is not None:
                raise conflict
            if not self._started(conn) and known != length:
                conn.execute(text("DELETE FROM cells"))
            self._set_meta(conn, "grid_length", json.dumps(length, sort_keys=True))
            return self._insert(conn, cells, retry_failed)

    def check_grid(self, cells: Sequence[dict[str, Any]], length: dict[str, Any]) -> None:
        """Raise the MedbenchError `register_grid` would raise for this grid; write nothing."""
        with self._reading() as conn:
            if conn is None:
                return
            known = json.loads(self._meta(conn, "grid_length") or "null")
            conflict = self._conflict(conn, cells, known, length)
        if conflict is not None:
            raise conflict

    @staticmethod
    def _started(conn: Connection) -> bool:
        return bool(conn.execute(text("SELECT COUNT(*) FROM cells WHERE attempts > 0")).scalar())

    def _conflict(
        self,
        conn: Connection,
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
        have = set(conn.execute(text("SELECT key FROM cells")).scalars())
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
        heartbeat older than `stale_seconds`. Cells are tried in the order of `keys`. On a
        server the cell's row is locked (skipping rows other claims hold) and checked again
        before it is taken."""
        owner = owner or Owner.current()
        now = time.time()
        with self._transaction() as conn:
            rows = {
                r["key"]: r
                for r in conn.execute(
                    text(
                        "SELECT key, status, claimed_host, claimed_pid, heartbeat FROM cells "
                        "WHERE status IN ('pending', 'running')"
                    )
                ).mappings()
            }
            for key in keys:
                if not self._claimable(rows.get(key), now, stale_seconds):
                    continue
                if self.server and not self._claimable(self._lock(conn, key), now, stale_seconds):
                    continue
                conn.execute(
                    text(
                        "UPDATE cells SET status='running', claimed_host=:host, claimed_pid=:pid, "
                        "heartbeat=:now, started_at=:now, attempts=attempts+1, error=NULL, "
                        "seconds_spent=seconds_spent+attempt_seconds, attempt_seconds=0 "
                        "WHERE key=:key"
                    ),
                    {"host": owner.host, "pid": owner.pid, "now": now, "key": key},
                )
                row = conn.execute(text("SELECT * FROM cells WHERE key=:key"), {"key": key})
                return dict(row.mappings().one())
        return None

    @staticmethod
    def _lock(conn: Connection, key: str) -> RowMapping | None:
        """The cell's row, locked until the transaction ends; None when another
        transaction holds it (it is being claimed or written by someone else)."""
        return (
            conn.execute(
                text(
                    "SELECT key, status, claimed_host, claimed_pid, heartbeat FROM cells "
                    "WHERE key=:key FOR UPDATE SKIP LOCKED"
                ),
                {"key": key},
            )
            .mappings()
            .first()
        )

    @staticmethod
    def _claimable(row: RowMapping | None, now: float, stale_seconds: float) -> bool:
        if row is None or row["status"] not in ("pending", "running"):
            return False
        if row["status"] == "pending":
            return True
        return abandoned(
            row["claimed_host"], row["claimed_pid"], row["heartbeat"], now, stale_seconds
        )

    def heartbeat(
        self, key: str, owner: Owner | None = None, *, attempt_seconds: float | None = None
    ) -> bool:
        """Refresh the heartbeat of a cell this owner holds (and the wall seconds its
        attempt has spent so far, when given); False if it lost the cell."""
        owner = owner or Owner.current()
        with self._transaction() as conn:
            cur = conn.execute(
                text(
                    "UPDATE cells SET heartbeat=:now, "
                    "attempt_seconds=COALESCE(:spent, attempt_seconds) WHERE key=:key AND "
                    "status='running' AND claimed_host=:host AND claimed_pid=:pid"
                ).bindparams(bindparam("spent", type_=sqlalchemy.Float)),
                {
                    "now": time.time(),
                    "spent": attempt_seconds,
                    "key": key,
                    "host": owner.host,
                    "pid": owner.pid,
                },
            )
            return cur.rowcount == 1

    def spend(self, key: str, attempt_seconds: float) -> None:
        """Record the wall seconds the cell's current attempt has spent (when it ends)."""
        with self._transaction() as conn:
            conn.execute(
                text("UPDATE cells SET attempt_seconds=:s WHERE key=:key"),
                {"s": attempt_seconds, "key": key},
            )

    def finish(self, key: str, results: RunResults, results_path: str | os.PathLike[str]) -> None:
        """Record a finished run from its results."""
        row = results.flat_row()
        names = ("test_acc", "test_auc", "val_acc", "val_auc", "n_params", "gflops")
        values = {name: row[name] for name in (*names, "efficiency", "train_seconds")}
        with self._transaction() as conn:
            conn.execute(
                text(
                    "UPDATE cells SET status='finished', finished_at=:now, heartbeat=:now, "
                    "results_path=:path, test_acc=:test_acc, test_auc=:test_auc, "
                    "val_acc=:val_acc, val_auc=:val_auc, n_params=:n_params, gflops=:gflops, "
                    "efficiency=:efficiency, train_seconds=:train_seconds, "
                    "collapsed=:collapsed, flags_json=:flags, error=NULL WHERE key=:key"
                ),
                {
                    **values,
                    "now": time.time(),
                    "path": self._rel(results_path),
                    "collapsed": int(row["collapsed"]),
                    "flags": json.dumps(row["flags"]),
                    "key": key,
                },
            )

    def fail(self, key: str, message: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                text("UPDATE cells SET status='failed', finished_at=:now, error=:e WHERE key=:key"),
                {"now": time.time(), "e": message, "key": key},
            )

    def release(self, key: str, owner: Owner | None = None) -> None:
        """Hand a claimed cell back (pending) so another run can take it, e.g. after Ctrl-C."""
        owner = owner or Owner.current()
        with self._transaction() as conn:
            conn.execute(
                text(
                    "UPDATE cells SET status='pending', claimed_host=NULL, claimed_pid=NULL, "
                    "heartbeat=NULL WHERE key=:key AND status='running' AND claimed_host=:host "
                    "AND claimed_pid=:pid"
                ),
                {"key": key, "host": owner.host, "pid": owner.pid},
            )

    # -- reading ----------------------------------------------------------------------------

    def rows(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All rows (or those of `keys`, in that order), flags decoded into a list."""
        with self._reading() as conn:
            query = text("SELECT * FROM cells ORDER BY created_at, key")
            all_rows = [] if conn is None else [dict(r) for r in conn.execute(query).mappings()]
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
        with self._reading() as conn:
            return None if conn is None else json.loads(self._meta(conn, "grid_length") or "null")

    def seconds_spent(self, keys: Iterable[str] | None = None) -> float:
        """Wall seconds the cells' attempts have spent (all cells, or those of `keys`)."""
        rows = self.rows(keys)
        return float(sum(r["seconds_spent"] + r["attempt_seconds"] for r in rows))

    def counts(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """Number of cells per status (all four statuses present)."""
        out = dict.fromkeys(STATUSES, 0)
        for r in self.rows(keys):
            out[r["status"]] += 1
        return out
