"""Where tune and search studies live, and how a dead worker's trial is found: the one
medbench module that relies on Optuna beneath its public API.

What it relies on (each pinned by a test in tests/test_study_storage.py, so an Optuna
release that changes one fails there and names it):

- `study._storage` is the storage the study was created with, or a cache in front of it
  whose `_backend` is that storage;
- `RDBStorage.heartbeat_interval`, `.grace_period` and `.engine` (a SQLAlchemy engine);
- heartbeats are rows of the table `trial_heartbeats`, keyed by the column `trial_id`,
  which `RDBStorage.record_heartbeat(trial_id)` writes;
- `FrozenTrial._trial_id` is the storage's id of a trial;
- `FrozenTrial.datetime_start` is naive local time;
- workers racing to create a new database's schema fail with an error whose text holds
  "UNIQUE constraint failed: alembic_version" or "already exists".

The rest of medbench uses Optuna's public API only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from datetime import datetime

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from medbench.errors import DiskWriteError, MedbenchError

STALE_RETRIES = 3  # a trial whose heartbeat went stale is re-queued this many times at most
SCHEMA_ATTEMPTS = 5


def is_schema_race(exc: Exception) -> bool:
    """Whether `exc` is what a worker sees when another created the same new schema first."""
    text = str(exc)
    return "UNIQUE constraint failed: alembic_version" in text or "already exists" in text


def make_storage(
    url: str, heartbeat_seconds: int = 60, *, sleep: Callable[[float], None] = time.sleep
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a RUNNING trial silent for 2 heartbeats is failed
    and re-queued (WAITING) with its parameters, up to 3 times."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    last_error: Exception | None = None
    # Workers started together race to create the schema (optuna/alembic); the loser sees
    # an IntegrityError or "table already exists" and succeeds when it tries again.
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return _rdb_storage(url, engine_kwargs, heartbeat_seconds)
        except Exception as exc:  # SQLAlchemy raises many types for a bad URL or server
            last_error = exc
            if not is_schema_race(exc):
                break
            sleep(0.2 * (attempt + 1))
    raise storage_error(url, last_error)


def storage_error(url: str, exc: Exception | None) -> MedbenchError:
    """One line for a storage that cannot be opened: the database's own first line (not
    SQLAlchemy's SQL and background link), with advice that fits the cause."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if any(text in reason for text in ("disk I/O error", "disk is full", "readonly database")):
        return DiskWriteError(
            f"cannot open study storage {url}: {reason}; free some disk space or make its "
            "folder writable (or choose another --out) and run again"
        )
    return MedbenchError(
        f"cannot open study storage {url}: {reason}; check --storage (an SQLAlchemy URL)"
    )


def _rdb_storage(
    url: str, engine_kwargs: dict | None, heartbeat_seconds: int
) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():  # heartbeats are an experimental Optuna feature
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=2 * heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=STALE_RETRIES
            ),
        )


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers (Optuna re-queues them with their parameters);
    return the numbers of those whose worker died before its first heartbeat."""
    with warnings.catch_warnings():  # heartbeats are an experimental Optuna feature
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        adopted = adopt_trials_without_heartbeat(study)
        optuna.storages.fail_stale_trials(study)
    return adopted


def rdb_storage_of(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind `study` (Optuna wraps it in a cache), or None for another kind."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def adopt_trials_without_heartbeat(
    study: optuna.Study, *, now: Callable[[], datetime] = datetime.now
) -> list[int]:
    """Give a heartbeat to RUNNING trials that never sent one and are older than the grace
    period, so that they go stale like any other dead trial; returns their numbers.

    optuna fails only trials whose heartbeat went stale. A worker killed between creating
    its trial and its heartbeat thread's first beat leaves a RUNNING trial with no heartbeat
    row, which would block the study's last slots forever. A live trial beats within
    milliseconds of its start, so one adopted by mistake just keeps beating."""
    storage = rdb_storage_of(study)
    if storage is None or not storage.heartbeat_interval:
        return []
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    old = _running_longer_than(study, grace, now())
    if not old:
        return []
    beating = _trial_ids_with_heartbeat(storage)
    silent = [t for t in old if t._trial_id not in beating]
    for t in silent:
        storage.record_heartbeat(t._trial_id)
    return [t.number for t in silent]


def _running_longer_than(study: optuna.Study, seconds: float, now: datetime) -> list[FrozenTrial]:
    """RUNNING trials started more than `seconds` before `now` (local, naive time, as
    Optuna stamps `datetime_start`)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > seconds
    ]


def _trial_ids_with_heartbeat(storage: optuna.storages.RDBStorage) -> set[int]:
    # Optuna offers no public way to list heartbeats: read its table.
    with storage.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))
        return {row[0] for row in rows}
