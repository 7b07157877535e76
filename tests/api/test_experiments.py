"""Creating, listing, reading and deleting experiments."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from eos_core.kappa import kappa_b
from eos_core.trace import METRICS
from eos_core.verdict import IN_S, OUTSIDE_S
from store import lifecycle, queries
from store.traces import append_trace

from ..resources import BROKER_PREFIX
from .conftest import Api, add_users, small_spec


def test_create_single_run_queues_it_after_commit(api: Api) -> None:
    log: list[Any] = []
    event.listen(api.sessions, "after_commit", lambda _session: log.append("commit"))
    api.client.app.state.enqueue = lambda ids: log.append(("enqueue", list(ids)))  # type: ignore[attr-defined]
    before = api.counts()

    body = api.submit(small_spec(), name="first", tags=["a", "b"])

    assert body["name"] == "first" and body["owner"] == "alice" and body["tags"] == ["a", "b"]
    (run,) = body["runs"]
    assert run["status"] == "queued" and run["params"] == {} and run["steps"] == 100
    assert run["spec"]["optimizer"]["lr"] == 0.5 and run["experiment_id"] == body["id"]
    assert log.index("commit") < log.index(("enqueue", [run["id"]]))  # sent only once committed
    after = api.counts()
    assert (after["experiments"], after["runs"]) == (before["experiments"] + 1, before["runs"] + 1)


def test_sweep_creates_one_run_per_grid_cell(api: Api) -> None:
    sweep = {"optimizer.lr": [0.1, 0.2, 0.4], "optimizer.batch_size": [8, 32]}
    body = api.submit(small_spec(), sweep=sweep)

    runs = body["runs"]
    assert len(runs) == 6 and body["sweep"] == sweep
    cells = {(r["params"]["optimizer.lr"], r["params"]["optimizer.batch_size"]) for r in runs}
    assert cells == {(lr, b) for lr in (0.1, 0.2, 0.4) for b in (8, 32)}
    for run in runs:
        assert run["spec"]["optimizer"]["lr"] == run["params"]["optimizer.lr"]
        assert run["spec"]["optimizer"]["batch_size"] == run["params"]["optimizer.batch_size"]
    assert sorted(api.enqueued) == sorted(r["id"] for r in runs)
    assert runs[0]["name"] == "tiny[lr=0.1,batch_size=8]"


def test_list_filters_and_paginates(api: Api) -> None:
    a1 = api.submit(name="lr-scan", tags=["scan"])
    a2 = api.submit(name="width", tags=["scan", "wide"])
    b1 = api.submit(user="bob", name="bob-lr-scan")
    assert api.post(f"/api/v1/runs/{b1['runs'][0]['id']}/cancel", "bob").status_code == 200

    def ids(**params: Any) -> tuple[list[int], int]:
        response = api.get("/api/v1/experiments", params=params)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["items"]], response.json()["total"]

    assert ids() == ([b1["id"], a2["id"], a1["id"]], 3)  # newest first
    assert ids(owner="bob") == ([b1["id"]], 1)
    assert ids(tag="scan") == ([a2["id"], a1["id"]], 2)
    assert ids(tag="wide", owner="alice") == ([a2["id"]], 1)
    assert ids(name="lr-scan") == ([b1["id"], a1["id"]], 2)
    assert ids(status="cancelled") == ([b1["id"]], 1)
    assert ids(status="queued") == ([a2["id"], a1["id"]], 2)
    assert ids(limit=2) == ([b1["id"], a2["id"]], 3)
    assert ids(limit=2, offset=2) == ([a1["id"]], 3)
    page = api.get("/api/v1/experiments", params={"limit": 1, "offset": 1}).json()
    assert (page["limit"], page["offset"], page["items"][0]["runs"]) == (1, 1, None)
    bad = api.get("/api/v1/experiments", params={"status": "sleeping"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "status"]


def test_get_experiment_with_runs_and_404(api: Api) -> None:
    created = api.submit(sweep={"seed": [1, 2]})
    body = api.get(f"/api/v1/experiments/{created['id']}").json()
    assert [r["params"] for r in body["runs"]] == [{"seed": 1}, {"seed": 2}]
    missing = api.get("/api/v1/experiments/999999")
    assert missing.status_code == 404 and missing.json() == {"detail": "no experiment 999999"}


def test_delete_experiment_owner_other_admin(api: Api) -> None:
    mine = api.submit(sweep={"seed": [1, 2]})
    other = api.submit(user="bob")
    before = api.counts()

    refused = api.delete(f"/api/v1/experiments/{other['id']}")
    assert refused.status_code == 403 and "only its owner or an admin" in refused.json()["detail"]
    assert api.counts() == before

    assert api.delete(f"/api/v1/experiments/{mine['id']}").status_code == 204
    assert api.get(f"/api/v1/experiments/{mine['id']}").status_code == 404
    assert api.get(f"/api/v1/runs/{mine['runs'][0]['id']}").status_code == 404
    assert api.counts()["runs"] == before["runs"] - 2

    assert api.delete(f"/api/v1/experiments/{other['id']}", "admin").status_code == 204
    assert api.counts()["experiments"] == before["experiments"] - 2


def test_delete_experiment_with_running_run_is_409(api: Api) -> None:
    created = api.submit()
    run_id = created["runs"][0]["id"]
    with api.sessions.begin() as session:
        lifecycle.claim(session=session, run_id=run_id, worker="w1", stale_after=timedelta(minutes=2))
    before = api.counts()
    response = api.delete(f"/api/v1/experiments/{created['id']}")
    assert response.status_code == 409 and "cancel them first" in response.json()["detail"]
    assert api.counts() == before


def test_real_enqueue_sends_to_the_broker_after_commit(sessions: sessionmaker[Session], settings: ApiSettings) -> None:
    """The default enqueue (worker.dispatch, under this session's key prefix) records each run's task and send time."""
    broker = redis.Redis.from_url(settings.broker_url)
    queue = BROKER_PREFIX + "cpu"
    broker.delete(queue)
    try:
        with TestClient(create_app(settings, sessions)) as client:
            api = Api(client, sessions, tokens=add_users(sessions))
            runs = api.submit(sweep={"seed": [1, 2]})["runs"]
            for run in runs:
                assert api.get(f"/api/v1/runs/{run['id']}").json()["timings"]["enqueued_at"] is not None
        assert broker.llen(queue) == 2
    finally:
        broker.delete(queue)


def test_kappa_per_batch_size_and_summaries_old_and_new(api: Api) -> None:
    created = api.submit(sweep={"optimizer.batch_size": [2, 8]})
    x = np.linspace(0.0, 10.0, 50)
    v = np.where(x > 6, OUTSIDE_S, IN_S)
    old = {"status": "completed", "final_loss": 0.5, "entrance_step": 3, "stability_constant": 1.5}
    with api.sessions.begin() as session:
        for run, summary in zip(created["runs"], (old, {"schema_version": 2, "kappa_B": 7.0}), strict=True):
            chunk = {name: np.full(50, np.nan) for name in METRICS}
            chunk.update(step=np.arange(50, dtype=np.int64), eta_loss=x, stable=v)
            append_trace(session=session, run_id=run["id"], chunk=chunk)
            db_run = queries.get_run(session=session, run_id=run["id"])
            db_run.status = "running"  # as if a worker had trained it
            lifecycle.finish(session=session, run=db_run, status=lifecycle.RunStatus.COMPLETED, summary=summary)
    body = api.get(f"/api/v1/experiments/{created['id']}/kappa").json()
    assert [i["batch_size"] for i in body["items"]] == [2, 8]
    expected = kappa_b(x, v)
    assert body["items"][0]["kappa_B"] == expected["kappa_B"] and body["items"][0]["kappa_B_bound"] == "upper"
    assert body["items"][0]["kappa_B_interval"] == expected["kappa_B_interval"]
    runs = {
        r["params"]["optimizer.batch_size"]: r for r in api.get(f"/api/v1/experiments/{created['id']}").json()["runs"]
    }
    assert runs[2]["summary"]["final_loss"] == 0.5 and runs[2]["summary"]["entrance_step"] is None
    assert runs[2]["summary"]["legacy"] == {"entrance_step": 3, "stability_constant": 1.5}
    assert runs[8]["summary"]["kappa_B"] == 7.0 and runs[8]["summary"]["legacy"] is None
    assert api.get("/api/v1/experiments/999999/kappa").status_code == 404
