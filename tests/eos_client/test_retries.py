"""The client rides out a busy server (503 + Retry-After) and a dropped connection without
creating an experiment twice: every submission carries one Idempotency-Key for all its tries."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from eos_client import Client
from eos_client import client as client_module
from eos_client.errors import EosError

from .support import tiny_spec

CREATED = {"id": 5, "name": "tiny", "owner": "alice", "tags": [], "spec": {}, "sweep": {}, "runs": []}


def _client(handler: Any) -> Client:
    client = Client("http://eos.test", "token")
    client._http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://eos.test/api/v1")
    return client


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    return slept


def test_a_busy_server_is_asked_again_after_retry_after_with_the_same_key(pauses: list[float]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) < 3:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "2"})
        return httpx.Response(201, json=CREATED)

    experiment = _client(handler).submit(tiny_spec())
    assert experiment.id == 5 and pauses == [2.0, 2.0]
    assert len(seen) == 3 and len(set(seen)) == 1 and len(seen[0]) >= 32


def test_a_dropped_connection_resends_a_keyed_submission(pauses: list[float]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) == 1:
            raise httpx.ConnectError("connection reset")
        return httpx.Response(201, json=CREATED)

    assert _client(handler).submit(tiny_spec()).id == 5 and len(set(seen)) == 1 and len(seen) == 2


def test_each_submission_has_its_own_key(pauses: list[float]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        return httpx.Response(201, json=CREATED)

    client = _client(handler)
    client.submit(tiny_spec())
    client.submit(tiny_spec())
    assert len(set(seen)) == 2


def test_retries_stop_at_retry_seconds_and_a_read_is_not_resent_on_a_dead_server(pauses: list[float]) -> None:
    calls: list[str] = []

    def busy(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503, json={"detail": "database unreachable"}, headers={"Retry-After": "30"})

    client = _client(busy)
    client.retry_seconds = 45.0
    with pytest.raises(EosError, match="database unreachable"):
        client.run(1)
    assert pauses == [30.0] and len(calls) == 2  # a second wait of 30 s would pass the 45 s budget

    def dead(request: httpx.Request) -> httpx.Response:
        calls.append("dead")
        raise httpx.ConnectError("refused")

    with pytest.raises(EosError):
        _client(dead).run(1)
    assert calls.count("dead") == 1
