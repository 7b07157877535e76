"""Bad requests get a status and a message a client can act on, and change nothing in the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from store.models import User
from tests.postgres import database_url, recreate_database, session_name

from .conftest import Api, small_spec

EXPERIMENTS = "/api/v1/experiments"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def unchanged(api: Api) -> Iterator[None]:
    """The test's requests must leave every table as it was, and send nothing to the broker."""
    before = api.counts()
    yield
    assert api.counts() == before
    assert api.enqueued == []


def error(response: Any, code: int) -> Any:
    assert response.status_code == code, response.text
    return response.json()["detail"]


@pytest.mark.usefixtures("unchanged")
class TestSubmission:
    def test_invalid_spec_names_the_field(self, api: Api) -> None:
        (detail,) = error(api.post(EXPERIMENTS, json={"spec": small_spec(lr=-1)}), 422)
        assert detail["loc"] == ["body", "spec", "optimizer", "lr"]
        assert "positive finite number, got -1" in detail["msg"]

    def test_unknown_spec_field(self, api: Api) -> None:
        (detail,) = error(api.post(EXPERIMENTS, json={"spec": {"optimizer": {"learning_rate": 1}}}), 422)
        assert detail["loc"] == ["body", "spec", "optimizer", "learning_rate"] and detail["type"] == "extra_forbidden"

    def test_inconsistent_spec_is_located_at_the_spec(self, api: Api) -> None:
        spec = {"dataset": {"classes": 2, "per_class": 5}, "optimizer": {"batch_size": 64}}
        (detail,) = error(api.post(EXPERIMENTS, json={"spec": spec}), 422)
        assert detail["loc"] == ["body", "spec"] and "larger than the training set" in detail["msg"]

    def test_bad_swept_value_is_located_at_the_sweep(self, api: Api) -> None:
        body = {"spec": small_spec(), "sweep": {"optimizer.lr": [0.1, -2.0]}}
        (detail,) = error(api.post(EXPERIMENTS, json=body), 422)
        assert detail["loc"] == ["body", "sweep", "optimizer.lr"] and "got -2.0" in detail["msg"]

    def test_unknown_sweep_path(self, api: Api) -> None:
        body = {"spec": small_spec(), "sweep": {"optimizer.lrr": [0.1]}}
        (detail,) = error(api.post(EXPERIMENTS, json=body), 422)
        assert detail["loc"] == ["body", "sweep", "optimizer.lrr"]
        assert detail["msg"] == "sweep path 'optimizer.lrr': no field 'lrr'"

    def test_empty_sweep_values(self, api: Api) -> None:
        (detail,) = error(api.post(EXPERIMENTS, json={"spec": small_spec(), "sweep": {"seed": []}}), 422)
        assert detail["loc"] == ["body", "sweep", "seed"] and "non-empty list" in detail["msg"]

    def test_oversized_sweep_states_the_limit(self, api: Api) -> None:
        body = {"spec": small_spec(), "sweep": {"seed": list(range(5)), "optimizer.lr": [0.1, 0.2, 0.3, 0.4, 0.5]}}
        (detail,) = error(api.post(EXPERIMENTS, json=body), 422)
        assert detail["loc"] == ["body", "sweep"] and "expands to 25 runs, more than the limit of 20" in detail["msg"]

    def test_queued_run_quota_is_429(self, api: Api) -> None:
        with api.sessions.begin() as session:
            session.query(User).filter_by(name="alice").one().max_queued_runs = 2
        before = api.counts()
        detail = error(api.post(EXPERIMENTS, json={"spec": small_spec(), "sweep": {"seed": [1, 2, 3]}}), 429)
        assert detail == "alice may have at most 2 queued or running runs; this adds 3"
        assert api.counts() == before

    def test_malformed_json(self, api: Api) -> None:
        response = api.post(EXPERIMENTS, content=b'{"spec": {', headers=JSON)
        (detail,) = error(response, 422)
        assert detail["type"] == "json_invalid" and detail["loc"][0] == "body"

    def test_body_of_the_wrong_shape(self, api: Api) -> None:
        detail = error(api.post(EXPERIMENTS, json={"sweep": {"seed": 3}, "color": "red"}), 422)
        assert {tuple(d["loc"]) for d in detail} == {("body", "spec"), ("body", "sweep", "seed"), ("body", "color")}

    def test_oversized_body_by_content_length(self, api: Api) -> None:
        body = {"spec": small_spec(), "tags": ["x" * 30_000]}
        assert error(api.post(EXPERIMENTS, json=body), 413) == "request body is larger than the limit of 20000 bytes"

    def test_oversized_body_streamed_without_length(self, api: Api) -> None:
        payload = json.dumps({"spec": small_spec(), "tags": ["x" * 30_000]}).encode()
        pieces = (payload[i : i + 4096] for i in range(0, len(payload), 4096))  # chunked: no Content-Length
        response = api.post(EXPERIMENTS, content=pieces, headers=JSON)
        assert error(response, 413) == "request body is larger than the limit of 20000 bytes"

    def test_missing_token(self, api: Api) -> None:
        response = api.client.post(EXPERIMENTS, json={"spec": small_spec()})
        assert error(response, 401).startswith("missing bearer token")
        assert response.headers["www-authenticate"] == "Bearer"

    def test_wrong_token(self, api: Api) -> None:
        response = api.client.post(
            EXPERIMENTS, json={"spec": small_spec()}, headers={"Authorization": "Bearer eos_nope"}
        )
        assert error(response, 401) == "invalid, revoked or expired token"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/runs/1"),
        ("GET", "/api/v1/experiments"),
        ("GET", "/api/v1/compare?runs=1"),
        ("DELETE", "/api/v1/runs/1"),
        ("POST", "/api/v1/runs/1/cancel"),
        ("GET", "/api/v1/runs/1/trace"),
    ],
)
def test_every_route_needs_a_token(api: Api, method: str, url: str) -> None:
    assert api.client.request(method, url).status_code == 401


def test_health_ready_and_docs_need_no_token(api: Api) -> None:
    assert api.client.get("/api/v1/health").json() == {"status": "ok"}
    assert api.client.get("/api/v1/ready").json() == {"status": "ok", "database": "ok", "broker": "ok"}
    assert api.client.get("/docs").status_code == 200
    assert "/api/v1/runs/{run_id}/trace" in api.client.get("/api/v1/openapi.json").json()["paths"]


def test_ready_is_503_without_a_broker(sessions: sessionmaker[Session], settings: ApiSettings) -> None:
    settings = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings, sessions, enqueue=lambda ids: None)) as client:
        response = client.get("/api/v1/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["database"] == "ok" and body["broker"].startswith("error")


def test_refuses_to_start_on_an_unmigrated_database(connection: Connection, settings: ApiSettings) -> None:
    empty = session_name("eos_test_api_empty")
    recreate_database(empty)
    settings = settings.model_copy(update={"database_url": database_url(empty)})
    with (
        pytest.raises(RuntimeError, match="eos db upgrade"),
        TestClient(create_app(settings, enqueue=lambda ids: None)),
    ):
        pass
