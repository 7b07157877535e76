"""An unreachable database or broker: a 503 with a JSON `detail` and `Retry-After`, never a 500,
and a submission refused while the broker is down creates nothing."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

import worker.dispatch
from api.app import create_app
from api.broker import BrokerCheck
from api.settings import ApiSettings
from store import queries

from .conftest import LOAD_URL, Api, add_users, small_spec

EXPERIMENTS = "/api/v1/experiments"
TOKEN = {"Authorization": "Bearer eos_whatever"}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def unavailable(response: Any, retry_after: str = "2") -> str:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == retry_after
    detail: str = response.json()["detail"]
    assert isinstance(detail, str)
    return detail


# --- the database -------------------------------------------------------------------------------


@pytest.fixture
def no_database(settings: ApiSettings) -> TestClient:
    """An app whose database does not answer (a closed port). No lifespan: it would refuse to start."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/eos"
    return TestClient(create_app(settings.model_copy(update={"database_url": url}), enqueue=lambda ids: None))


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", EXPERIMENTS, None),
        ("GET", "/api/v1/runs/1", None),
        ("GET", "/api/v1/runs/1/trace?format=csv", None),
        ("POST", EXPERIMENTS, {"spec": small_spec()}),
        ("POST", "/api/v1/runs/1/cancel", None),
        ("DELETE", "/api/v1/experiments/1", None),
    ],
)
def test_database_down_is_503_on_every_route(no_database: TestClient, method: str, url: str, body: Any) -> None:
    detail = unavailable(no_database.request(method, url, headers=TOKEN, json=body))
    assert detail == "the database is unavailable (OperationalError); retry in 2 s"


def test_database_down_keeps_health_up_and_ready_503(no_database: TestClient) -> None:
    assert no_database.get("/api/v1/health").status_code == 200
    ready = no_database.get("/api/v1/ready")
    assert ready.status_code == 503 and ready.json()["database"].startswith("error")


def driver_error(message: str) -> Exception:
    return Exception(message)


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT", {}, driver_error("terminating connection due to administrator command")),
        DBAPIError("SELECT", {}, driver_error("server closed the connection"), connection_invalidated=True),
    ],
    ids=["operational", "invalidated"],
)
def test_a_connection_lost_mid_request_is_503(api: Api, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def fail(**_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(queries, "list_experiments", fail)
    monkeypatch.setattr(queries, "get_experiment", fail)
    assert "the database is unavailable (Exception)" in unavailable(api.get(EXPERIMENTS))
    assert "the database is unavailable" in unavailable(api.delete(f"{EXPERIMENTS}/1"))


def test_a_commit_that_fails_is_503_and_creates_nothing(api: Api) -> None:
    before = api.counts()

    def lost(_session: Session) -> None:
        raise OperationalError("COMMIT", {}, driver_error("server closed the connection unexpectedly"))

    event.listen(api.sessions, "before_commit", lost)
    try:
        response = api.post(EXPERIMENTS, json={"spec": small_spec()})
    finally:
        event.remove(api.sessions, "before_commit", lost)
    unavailable(response)
    assert api.counts() == before and api.enqueued == []


def test_other_database_errors_are_a_json_500(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**_kwargs: Any) -> Any:
        raise IntegrityError("INSERT", {}, driver_error("duplicate key"))

    monkeypatch.setattr(queries, "list_experiments", fail)
    client = TestClient(api.client.app, raise_server_exceptions=False)
    response = client.get(EXPERIMENTS, headers=api.auth())
    assert response.status_code == 500 and response.json() == {"detail": "internal server error"}


def test_an_exhausted_pool_is_503_after_the_pool_timeout(committed: sessionmaker[Session]) -> None:
    """Every connection of the app's own pool held elsewhere: a request waits EOS_DB_POOL_TIMEOUT, then 503."""
    tokens = add_users(committed)
    settings = ApiSettings(database_url=LOAD_URL, db_pool_size=1, db_pool_timeout=0.5)
    with TestClient(create_app(settings, enqueue=lambda ids: None)) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert engine.pool.timeout() == 0.5
        held = [engine.connect(), engine.connect()]  # pool size 1, overflow 1
        try:
            started = time.monotonic()
            response = client.get(EXPERIMENTS, headers={"Authorization": f"Bearer {tokens['alice']}"})
            elapsed = time.monotonic() - started
        finally:
            for connection in held:
                connection.close()
        assert "no database connection came free in time" in unavailable(response)
        assert 0.5 <= elapsed < 3
        assert client.get(EXPERIMENTS, headers={"Authorization": f"Bearer {tokens['alice']}"}).status_code == 200


# --- the broker ---------------------------------------------------------------------------------


@pytest.fixture
def no_broker(api: Api, settings: ApiSettings) -> TestClient:
    """The api fixture's database and users, in an app that sends to a broker that is down."""
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed_port()}/0"})
    return TestClient(create_app(down, api.sessions))


def test_submission_while_the_broker_is_down_is_503_and_creates_nothing(api: Api, no_broker: TestClient) -> None:
    before = api.counts()
    response = no_broker.post(EXPERIMENTS, headers=api.auth(), json={"spec": small_spec(), "sweep": {"seed": [1, 2]}})
    detail = unavailable(response)
    assert detail.startswith("the broker is unreachable, so runs could not be sent to the workers; nothing was created")
    assert "ConnectionError" in detail
    assert api.counts() == before
    assert no_broker.get(EXPERIMENTS, headers=api.auth()).status_code == 200  # reads do not need the broker


def test_a_replay_while_the_broker_is_down_still_answers(api: Api, no_broker: TestClient) -> None:
    key = {"Idempotency-Key": "before-the-outage"}
    first = api.post(EXPERIMENTS, headers=key, json={"spec": small_spec()})
    assert first.status_code == 201
    replay = no_broker.post(EXPERIMENTS, headers={**api.auth(), **key}, json={"spec": small_spec()})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]


def test_an_injected_enqueue_is_never_checked(api: Api, settings: ApiSettings) -> None:
    """The embedded local mode and the tests inject their enqueue: a broker URL that is down does not matter."""
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed_port()}/0"})
    app = create_app(down, api.sessions, enqueue=lambda ids: None)
    assert app.state.broker is None
    response = TestClient(app).post(EXPERIMENTS, headers=api.auth(), json={"spec": small_spec()})
    assert response.status_code == 201


def test_a_send_that_fails_after_the_commit_leaves_the_runs_queued(
    api: Api, settings: ApiSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis answered the check, then died before the send: 201, the runs stay queued for the reaper."""

    def dead(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(worker.dispatch, "enqueue", dead)
    with caplog.at_level(logging.ERROR, logger="api.app"):
        response = TestClient(create_app(settings, api.sessions)).post(
            EXPERIMENTS, headers=api.auth(), json={"spec": small_spec()}
        )
    assert response.status_code == 201, response.text
    (run,) = response.json()["runs"]
    stored = api.get(f"/api/v1/runs/{run['id']}").json()
    assert stored["status"] == "queued" and stored["timings"]["enqueued_at"] is None
    assert f"could not send runs [{run['id']}] to the broker; they stay queued for the reaper" in caplog.text


def test_the_broker_check_is_cached(settings: ApiSettings) -> None:
    up = BrokerCheck(settings.broker_url, cache_s=0.3)
    assert [up.error() for _ in range(50)] == [None] * 50
    assert up.pings == 1
    time.sleep(0.35)
    assert up.error() is None and up.pings == 2

    down = BrokerCheck(f"redis://127.0.0.1:{closed_port()}/0", cache_s=0.3)
    started = time.monotonic()
    errors = {down.error() for _ in range(50)}
    assert time.monotonic() - started < 1 and down.pings == 1
    (error,) = errors
    assert error is not None and error.startswith("ConnectionError")
