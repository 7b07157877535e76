"""Bursts: beyond EOS_MAX_IN_FLIGHT requests in progress, a request is refused at once with 503 and
Retry-After, before it touches the database; every 201 is one experiment, and no experiment
exists without its 201."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from store.models import Experiment, Run

from .conftest import LOAD_URL, Api, add_users, small_spec

EXPERIMENTS = "/api/v1/experiments"


def test_the_default_limit_is_the_pool_size_plus_its_overflow() -> None:
    assert ApiSettings().in_flight_limit == 20
    assert ApiSettings(db_pool_size=4).in_flight_limit == 8
    assert ApiSettings(db_pool_size=4, max_in_flight=3).in_flight_limit == 3
    assert ApiSettings(max_in_flight=0).in_flight_limit == 0  # no limit


def test_a_full_process_refuses_api_requests_but_answers_probes(api: Api) -> None:
    admission = api.client.app.state.admission  # type: ignore[attr-defined]
    assert (admission.limit, admission.in_flight) == (20, 0)
    before = api.counts()
    admission.in_flight = admission.limit  # as if 20 requests were in progress
    try:
        for response in (api.get(EXPERIMENTS), api.post(EXPERIMENTS, json={"spec": small_spec()})):
            assert response.status_code == 503 and response.headers["retry-after"] == "2"
            assert response.json() == {
                "detail": "the server is busy: 20 requests are already in progress; retry in 2 s"
            }
        assert admission.refused == 2
        assert api.client.get("/api/v1/health").status_code == 200
        assert api.client.get("/api/v1/ready").status_code == 200
        assert api.client.get("/api/v1/openapi.json").status_code == 200
        assert api.client.get("/").status_code == 200  # the dashboard's pages
    finally:
        admission.in_flight = 0
    assert api.counts() == before and api.enqueued == []
    assert api.get(EXPERIMENTS).status_code == 200


def test_a_burst_is_answered_and_every_201_is_one_experiment(committed: sessionmaker[Session]) -> None:
    """150 POSTs against one in-process app with default settings (20 in flight, pool 10 + 10, 3 s pool
    timeout): 60 at once, then one every 5 ms. Sending each experiment's runs takes 50 ms (after the 201)."""
    tokens = add_users(committed)
    sent: list[int] = []

    def enqueue(ids: Any) -> None:
        time.sleep(0.05)
        sent.extend(ids)

    app = create_app(ApiSettings(database_url=LOAD_URL), enqueue=enqueue)
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    body = {"spec": small_spec(), "sweep": {"seed": [1, 2]}}

    async def one(client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, float]:
        await asyncio.sleep(max(0, i - 60) * 0.005)
        started = time.monotonic()
        response = await client.post(EXPERIMENTS, json=body, headers=headers)
        return response, time.monotonic() - started

    async def burst() -> list[tuple[httpx.Response, float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://eos", timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(150)))

    try:
        answers = asyncio.run(burst())
    finally:
        app.state.engine.dispose()

    created = [r.json()["id"] for r, _ in answers if r.status_code == 201]
    refused = [r for r, _ in answers if r.status_code == 503]
    assert len(created) + len(refused) == 150, {r.status_code: r.text for r, _ in answers}
    assert len(created) >= 20 and len(refused) >= 40  # the first 60: 20 admitted, 40 refused at once
    for response in refused:
        assert response.headers["retry-after"] == "2" and "the server is busy" in response.json()["detail"]
    assert max(seconds for _, seconds in answers) < 10

    with committed() as session:
        stored = list(session.scalars(select(Experiment.id)))
        runs = list(session.scalars(select(Run.id)))
    assert len(created) == len(set(created))  # every 201 is its own experiment ...
    assert sorted(stored) == sorted(created)  # ... and no experiment exists without its 201
    assert sorted(sent) == sorted(runs) and len(runs) == 2 * len(created)

    admission = app.state.admission
    assert admission.in_flight == 0 and admission.peak == 20 and admission.refused == len(refused)


def test_after_a_burst_the_process_serves_again(committed: sessionmaker[Session]) -> None:
    tokens = add_users(committed)
    settings = ApiSettings(database_url=LOAD_URL, max_in_flight=2)
    with TestClient(create_app(settings, enqueue=lambda ids: None)) as client:
        headers = {"Authorization": f"Bearer {tokens['alice']}"}
        for _ in range(3):
            assert client.post(EXPERIMENTS, json={"spec": small_spec()}, headers=headers).status_code == 201
        assert client.app.state.admission.in_flight == 0  # type: ignore[attr-defined]
