"""`medbench.workflows.study_storage`: what it relies on beneath Optuna's public API, pinned one
reliance per test (a failure here names what an Optuna release changed), and how it finds
a dead worker's trial."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from medbench.errors import MedbenchError
from medbench.workflows.study_storage import (
    adopt_trials_without_heartbeat,
    is_schema_race,
    make_storage,
    rdb_storage_of,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage is supposed to be used:UserWarning"
)


def _changed(what: str) -> str:
    return (
        f"Optuna {optuna.__version__} changed {what}; medbench.workflows.study_storage relies on it "
        "(see its docstring) and needs updating"
    )


@pytest.fixture
def storage(tmp_path) -> optuna.storages.RDBStorage:
    return make_storage(f"sqlite:///{tmp_path / 'study.sqlite'}", heartbeat_seconds=1)


@pytest.fixture
def study(storage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name="s")


# ----------------------------------------------------------------------------- what it relies on


@pytest.mark.slow
def test_a_study_keeps_the_storage_it_was_made_with(storage, study):
    inner = getattr(study._storage, "_backend", study._storage)
    assert inner is storage, _changed("where a Study keeps its storage (study._storage._backend)")


def test_the_storage_exposes_its_heartbeat_settings_and_engine(storage):
    assert storage.heartbeat_interval == 1, _changed("RDBStorage.heartbeat_interval")
    assert storage.grace_period == 2, _changed("RDBStorage.grace_period")
    assert isinstance(storage.engine, sqlalchemy.engine.Engine), _changed("RDBStorage.engine")


def test_a_recorded_heartbeat_is_a_row_of_trial_heartbeats_keyed_by_trial_id(storage, study):
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert isinstance(getattr(frozen, "_trial_id", None), int), _changed("FrozenTrial._trial_id")
    storage.record_heartbeat(frozen._trial_id)
    with storage.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).fetchall()
    assert [row[0] for row in rows] == [frozen._trial_id], _changed(
        "the heartbeat table (trial_heartbeats, column trial_id)"
    )


def test_a_trial_start_is_stamped_in_naive_local_time(study):
    before = datetime.now()
    trial = study.ask()
    start = study.get_trials(deepcopy=False)[trial.number].datetime_start
    assert start.tzinfo is None, _changed("FrozenTrial.datetime_start (no longer naive)")
    assert before - timedelta(seconds=1) <= start <= datetime.now(), _changed(
        "FrozenTrial.datetime_start (no longer local time)"
    )


def test_the_errors_of_a_schema_creation_race_are_recognised(tmp_path):
    # What a worker sees when another created the same table, or stamped the same schema
    # version, a moment before it.
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'race.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY)"))
        conn.execute(sqlalchemy.text("INSERT INTO alembic_version VALUES ('v1')"))
    errors = []
    for sql in (
        "CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('v1')",
    ):
        with pytest.raises(sqlalchemy.exc.SQLAlchemyError) as caught, engine.begin() as conn:
            conn.execute(sqlalchemy.text(sql))
        errors.append(caught.value)
    assert all(is_schema_race(exc) for exc in errors), [str(e) for e in errors]


# ----------------------------------------------------------------------------- behaviour


def test_a_storage_that_cannot_be_opened_is_one_error_naming_the_url():
    with pytest.raises(MedbenchError, match="cannot open study storage nosuchdb://x"):
        make_storage("nosuchdb://x")


def test_the_storage_behind_an_in_memory_study_is_none():
    assert rdb_storage_of(optuna.create_study()) is None


def test_a_running_trial_that_never_beat_is_given_a_heartbeat_once_past_the_grace(study):
    orphan = study.ask()
    later = datetime.now() + timedelta(seconds=3)  # grace period: 2 heartbeats of 1 s
    assert adopt_trials_without_heartbeat(study, now=lambda: later) == [orphan.number]
    assert adopt_trials_without_heartbeat(study, now=lambda: later) == []  # it beats now


def test_a_running_trial_inside_the_grace_period_is_left_alone(study):
    study.ask()
    assert adopt_trials_without_heartbeat(study, now=datetime.now) == []
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
