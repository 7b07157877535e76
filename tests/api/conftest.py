"""The API against the real PostgreSQL: a dedicated database, upgraded once per session; every
test runs inside one outer transaction that is rolled back (sessions join it with savepoints, so
the route's commit only releases a savepoint)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from store import queries
from store.models import ApiToken, Event, Experiment, Run, TraceChunk, User
from tests.postgres import database_url, fresh_engine, session_name
from tests.resources import REDIS_URL

DATABASE = session_name("eos_test_api")
URL = database_url(DATABASE)
# Tests that need real concurrency (many connections, real commits) use their own database,
# emptied after each of them (see `committed`).
LOAD_DATABASE = session_name("eos_test_api_load")
LOAD_URL = database_url(LOAD_DATABASE)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    engine = fresh_engine(DATABASE)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        outer = connection.begin()
        yield connection
        outer.rollback()


@pytest.fixture
def sessions(connection: Connection) -> sessionmaker[Session]:
    return sessionmaker(bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint")


@pytest.fixture
def settings() -> ApiSettings:
    # Small limits, so the tests reach them; runs are never sent (the enqueue is a list).
    return ApiSettings(
        database_url=URL,
        broker_url=REDIS_URL,
        max_runs_per_sweep=20,
        max_queued_runs_per_user=50,
        max_request_bytes=20_000,
    )


@dataclass
class Api:
    """A test client plus what the test needs to check its effects."""

    client: TestClient
    sessions: sessionmaker[Session]
    enqueued: list[int] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, url: str, user: str = "alice", **kwargs: Any) -> Any:
        return self.client.get(url, headers=self.auth(user), **kwargs)

    def post(self, url: str, user: str = "alice", headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return self.client.post(url, headers={**self.auth(user), **(headers or {})}, **kwargs)

    def delete(self, url: str, user: str = "alice") -> Any:
        return self.client.delete(url, headers=self.auth(user))

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            return {
                model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for model in (User, ApiToken, Experiment, Run, Event, TraceChunk)
            }

    def submit(self, spec: dict[str, Any] | None = None, user: str = "alice", **body: Any) -> dict[str, Any]:
        response = self.post("/api/v1/experiments", user, json={"spec": spec or small_spec(), **body})
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


def small_spec(**optimizer: Any) -> dict[str, Any]:
    return {"name": "tiny", "device": "cpu", "optimizer": {"lr": 0.5, "steps": 100, **optimizer}}


def add_users(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions.begin() as session:
        return {
            name: queries.create_user(session=session, name=name, is_admin=name == "admin")[1]
            for name in ("alice", "bob", "admin")
        }


@pytest.fixture
def api(sessions: sessionmaker[Session], settings: ApiSettings) -> Iterator[Api]:
    enqueued: list[int] = []
    app = create_app(settings, sessions, enqueue=enqueued.extend)
    with TestClient(app) as client:
        yield Api(client, sessions, enqueued, add_users(sessions))


@pytest.fixture(scope="session")
def load_engine() -> Iterator[Engine]:
    engine = fresh_engine(LOAD_DATABASE)
    yield engine
    engine.dispose()


@pytest.fixture
def committed(load_engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions on the load database that really commit; every table is emptied afterwards."""
    yield sessionmaker(bind=load_engine, expire_on_commit=False)
    tables = ", ".join(model.__tablename__ for model in (TraceChunk, Event, Run, Experiment, ApiToken, User))
    with load_engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
