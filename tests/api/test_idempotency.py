"""POST /experiments with an Idempotency-Key: a retried request returns the experiment the first
one created, and creates (and sends) nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from store import queries
from store.models import Experiment, User

from .conftest import LOAD_URL, Api, add_users, small_spec

EXPERIMENTS = "/api/v1/experiments"
KEY = "Idempotency-Key"


def post(api: Api, key: str | None, user: str = "alice", **body: Any) -> Any:
    headers = {KEY: key} if key is not None else {}
    return api.post(EXPERIMENTS, user, headers=headers, json={"spec": small_spec(), **body})


def test_same_key_returns_the_first_experiment_and_creates_nothing(api: Api) -> None:
    sweep = {"seed": [1, 2], "optimizer.lr": [0.1, 0.2]}
    first = post(api, "k-1", sweep=sweep, name="grid", tags=["a"])
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before, sent = api.counts(), list(api.enqueued)
    assert len(sent) == 4

    # The same request again (the sweep's keys in another order are the same sweep).
    again = post(api, "k-1", sweep=dict(reversed(sweep.items())), name="grid", tags=["a"])

    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert api.counts() == before
    assert api.enqueued == sent  # nothing sent again


def test_an_omitted_name_stands_for_the_spec_name(api: Api) -> None:
    assert post(api, "k-name").status_code == 201
    assert post(api, "k-name", name="tiny").status_code == 200  # small_spec()'s name


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spec": small_spec(lr=0.25)}, "spec"),
        ({"sweep": {"seed": [1, 2, 3]}}, "sweep"),
        ({"name": "other"}, "name"),
        ({"tags": ["b"]}, "tags"),
    ],
)
def test_same_key_with_a_different_request_is_422(api: Api, change: dict[str, Any], field: str) -> None:
    first = post(api, "k-2", sweep={"seed": [1, 2]}, name="grid", tags=["a"])
    assert first.status_code == 201
    before, sent = api.counts(), list(api.enqueued)

    body = {"spec": small_spec(), "sweep": {"seed": [1, 2]}, "name": "grid", "tags": ["a"], **change}
    response = api.post(EXPERIMENTS, headers={KEY: "k-2"}, json=body)

    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["type"] == "idempotency_key_reused" and detail["loc"] == ["header", KEY]
    assert f"already used for experiment {first.json()['id']} with a different {field};" in detail["msg"]
    assert api.counts() == before and api.enqueued == sent


def test_keys_are_per_owner(api: Api) -> None:
    alice = post(api, "shared")
    bob = post(api, "shared", user="bob")
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["id"] != bob.json()["id"] and bob.json()["owner"] == "bob"
    assert post(api, "shared", user="bob").json()["id"] == bob.json()["id"]


def test_without_a_key_every_post_creates(api: Api) -> None:
    ids = {post(api, None).json()["id"] for _ in range(2)}
    assert len(ids) == 2


def test_replay_needs_no_quota_and_a_deleted_experiment_frees_its_key(api: Api) -> None:
    first = post(api, "k-3").json()
    with api.sessions.begin() as session:
        session.scalars(select(User).where(User.name == "alice")).one().max_queued_runs = 1
    assert post(api, "k-3").status_code == 200  # a replay adds no run: not refused by the full quota
    assert post(api, "k-4").status_code == 429

    assert api.delete(f"{EXPERIMENTS}/{first['id']}").status_code == 204
    again = post(api, "k-3")
    assert again.status_code == 201 and again.json()["id"] != first["id"]


@pytest.mark.parametrize(("key", "code"), [("", 422), ("x" * 201, 422), ("x" * 200, 201)])
def test_key_length(api: Api, key: str, code: int) -> None:
    before = api.counts()
    response = post(api, key)
    assert response.status_code == code, response.text
    if code == 422:
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["header", KEY]
        assert api.counts() == before


def test_the_header_is_documented(api: Api) -> None:
    operation = api.client.get("/api/v1/openapi.json").json()["paths"][EXPERIMENTS]["post"]
    (header,) = [p for p in operation["parameters"] if p["name"] == KEY]
    assert header["in"] == "header" and not header["required"]
    schema = header["schema"]["anyOf"][0]
    assert (schema["minLength"], schema["maxLength"]) == (1, 200)
    assert {"200", "201", "422", "503"} <= set(operation["responses"])


# --- concurrency, on a database that really commits -----------------------------------------


def test_racing_transactions_with_one_key_create_one_experiment(committed: sessionmaker[Session]) -> None:
    """B misses A's uncommitted experiment, inserts, and waits on the unique index; when A commits,
    B's insert fails, its savepoint is rolled back and B returns A's experiment."""
    add_users(committed)
    spec = small_spec()

    def submit(session: Session) -> tuple[Experiment, bool]:
        owner = queries.get_user(session=session, name="alice")
        return queries.create_experiment_once(session=session, owner=owner, idempotency_key="race", spec=spec)

    outcome: dict[str, Any] = {}

    def second() -> None:
        with committed() as b:
            experiment, created = submit(b)
            outcome.update(id=experiment.id, created=created)
            b.commit()

    with committed() as a:
        first, created = submit(a)  # flushed, not committed
        assert created
        thread = threading.Thread(target=second)
        thread.start()
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        deadline = time.monotonic() + 10
        with committed() as probe:
            while probe.scalar(waiting) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert probe.scalar(waiting) == 1, "B should be waiting on A's key"
        a.commit()
    thread.join(10)

    assert outcome == {"id": first.id, "created": False}
    with committed() as session:
        assert session.scalar(select(func.count()).select_from(Experiment)) == 1


def test_concurrent_posts_with_one_key_create_one_experiment(committed: sessionmaker[Session]) -> None:
    tokens = add_users(committed)
    enqueued: list[list[int]] = []
    app = create_app(ApiSettings(database_url=LOAD_URL), enqueue=lambda ids: enqueued.append(list(ids)))
    headers = {"Authorization": f"Bearer {tokens['alice']}", KEY: "burst-key"}
    body = {"spec": small_spec(), "sweep": {"seed": [1, 2]}}

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://eos") as client:
            return await asyncio.gather(*(client.post(EXPERIMENTS, json=body, headers=headers) for _ in range(12)))

    try:
        responses = asyncio.run(burst())
    finally:
        app.state.engine.dispose()

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 11 + [201], [r.text for r in responses if r.status_code not in (200, 201)]
    (experiment_id,) = {r.json()["id"] for r in responses}
    with committed() as session:
        assert list(session.scalars(select(Experiment.id))) == [experiment_id]
        runs = [run.id for run in queries.list_runs(session=session, experiment_id=experiment_id)]
    assert enqueued == [runs]  # sent once, by the request that created it
