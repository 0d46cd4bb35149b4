"""Where a benchmark's results store lives and how it is opened: the folder's SQLite
file, or a database server named by an SQLAlchemy URL (see `medbench.runs.store`)."""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from medbench.errors import MedbenchError

STORE_NAME = "results.sqlite"
LOCATION_NAME = "store.json"  # where the folder's store lives, when it is on a server


def server_type(sqlite_type: str) -> str:
    """A column type for PostgreSQL: its REAL has 24 bits, too few for epoch seconds."""
    return sqlite_type.replace("REAL", "DOUBLE PRECISION")


def database_url(url: str) -> str:
    """`url` as SQLAlchemy opens it: a bare `postgresql://` goes through psycopg (v3) where
    psycopg2, SQLAlchemy's default driver for it, is not installed."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        try:
            # Only whether it imports (it ships no type information): SQLAlchemy loads it.
            importlib.import_module("psycopg2")
        except ImportError:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def public_url(url: str) -> str:
    """The URL without its password: what may be written to a file or printed."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url.split("@", 1)[-1]
    return parsed._replace(password=None).render_as_string(hide_password=False)


def recorded_url(folder: str | os.PathLike[str]) -> str | None:
    """The database URL `folder`'s store lives at, when it is on a server (else None)."""
    path = Path(folder) / LOCATION_NAME
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["url"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedbenchError(
            f"cannot read {path} ({exc}): it names the database of this folder's grid; "
            "restore it, or give the database with --storage URL"
        ) from exc


def has_store(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` has a results store (its own SQLite file, or one on a server)."""
    return (Path(folder) / STORE_NAME).exists() or (Path(folder) / LOCATION_NAME).exists()


def sqlite_engine(connect: Callable[[], sqlite3.Connection]) -> Engine:
    """An engine over sqlite3 connections made by `connect`, each in the driver's
    autocommit mode, so that the store itself says BEGIN IMMEDIATE where it writes."""

    def creator() -> sqlite3.Connection:
        conn = connect()
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    return sqlalchemy.create_engine("sqlite://", creator=creator, poolclass=NullPool)


def server_engine(url: str) -> Engine:
    try:
        return sqlalchemy.create_engine(database_url(url), poolclass=NullPool)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
        raise MedbenchError(
            f"cannot use --storage {public_url(url)}: {exc}; give an SQLAlchemy URL such as "
            "postgresql+psycopg://user@host/db (pip install 'psycopg[binary]')"
        ) from exc


def first_line(exc: BaseException) -> str:
    """The database's own message (not SQLAlchemy's SQL and background link)."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
