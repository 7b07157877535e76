"""The store against the real PostgreSQL (and the embedded SQLite), each test in its own transaction.

PostgreSQL: a dedicated database, recreated and upgraded with Alembic once per session. SQLite:
a file in a temporary folder, upgraded the same way. Every test gets a Session joined to an
outer transaction with savepoints, rolled back at the end, so tests see nothing of each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from store.db import make_engine, upgrade
from store.models import Experiment, Run, User

from ..postgres import fresh_engine
from .support import DATABASE


@pytest.fixture(scope="session")
def postgresql_engine() -> Iterator[Engine]:
    engine = fresh_engine(DATABASE)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('store') / 'eos.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@pytest.fixture
def new_run(session: Session) -> Callable[[], int]:
    """Make runs (with their user and experiment) in the test's transaction; returns their ids."""
    user = User(name="tester")
    experiment = Experiment(name="traces", owner=user, spec={})
    session.add_all([user, experiment])

    def make() -> int:
        run = Run(experiment=experiment, spec={}, spec_hash="0" * 64)
        session.add(run)
        session.flush()
        return run.id

    return make


@pytest.fixture
def run_id(new_run: Callable[[], int]) -> int:
    return new_run()


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("EOS_DATABASE_URL", raising=False)
    return tmp_path
