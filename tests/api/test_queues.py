"""Queues that have workers (issue 9 item 4): runs say whether a live worker serves their queue,
a submission warns when none does, device auto goes to a served queue, and GET /workers lists them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.broker import BrokerCheck
from api.settings import ApiSettings
from store import workers

from .conftest import Api, add_users, small_spec


@pytest.fixture
def service(sessions: sessionmaker[Session], settings: ApiSettings) -> Iterator[Api]:
    """An app that sends runs to workers (its broker check is real), with the sends recorded instead."""
    enqueued: list[int] = []
    app = create_app(settings, sessions, enqueue=enqueued.extend)
    app.state.broker = BrokerCheck(settings.broker_url)  # as when the app sends to Redis itself
    with TestClient(app) as client:
        yield Api(client, sessions, enqueued, add_users(sessions))


def _beat(api: Api, name: str, queue: str) -> None:
    with api.sessions.begin() as session:
        workers.beat(session=session, name=name, queue=queue, host="node", pid=7)


def test_without_a_worker_the_runs_wait_and_the_submission_says_so(service: Api) -> None:
    created = service.submit({**small_spec(), "device": "auto"}, sweep={"seed": [1, 2]})
    assert [run["queue"] for run in created["runs"]] == ["gpu", "gpu"]
    assert [run["queue_served"] for run in created["runs"]] == [False, False]
    (warning,) = created["warnings"]
    assert "no live worker serves the gpu queue" in warning and "eos worker --queue gpu" in warning
    assert service.get(f"/api/v1/experiments/{created['id']}").json()["warnings"] == [warning]
    assert service.get("/api/v1/workers").json() == {"items": [], "served": [], "unserved": ["gpu", "cpu"]}


def test_device_auto_goes_to_the_queue_a_live_cpu_worker_serves(service: Api) -> None:
    _beat(service, "cpu-1", "cpu")
    created = service.submit({**small_spec(), "device": "auto"})
    (run,) = created["runs"]
    assert run["queue"] == "cpu" and run["queue_served"] is True and created["warnings"] == []
    assert service.get(f"/api/v1/runs/{run['id']}").json()["queue_served"] is True
    listed = service.get("/api/v1/workers").json()
    assert [w["name"] for w in listed["items"]] == ["cpu-1"] and listed["unserved"] == ["gpu"]


def test_the_embedded_store_has_no_queues_to_warn_about(api: Api) -> None:
    created = api.submit({**small_spec(), "device": "auto"})
    assert created["warnings"] == [] and created["runs"][0]["queue_served"] is None
