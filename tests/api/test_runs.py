"""Reading runs and their events; cancelling and deleting them, as owner, other user and admin."""

from __future__ import annotations

from datetime import timedelta

from store import lifecycle, queries

from .conftest import Api


def start(api: Api, run_id: int) -> None:
    with api.sessions.begin() as session:
        lifecycle.claim(session=session, run_id=run_id, worker="w1", stale_after=timedelta(minutes=2))


def test_get_run_and_list_runs(api: Api) -> None:
    created = api.submit(sweep={"seed": [1, 2, 3]})
    first = created["runs"][0]
    body = api.get(f"/api/v1/runs/{first['id']}").json()
    assert body == first
    assert body["timings"]["created_at"] and body["timings"]["finished_at"] is None
    assert (body["progress"], body["step"], body["attempts"], body["worker"]) == (0.0, 0, 0, None)

    listed = api.get("/api/v1/runs", params={"experiment_id": created["id"]}).json()
    assert listed["total"] == 3 and [r["params"]["seed"] for r in listed["items"]] == [1, 2, 3]
    start(api, first["id"])
    running = api.get("/api/v1/runs", params={"experiment_id": created["id"], "status": "running"}).json()
    assert [r["id"] for r in running["items"]] == [first["id"]]
    assert running["items"][0]["worker"] == "w1" and running["items"][0]["attempts"] == 1

    missing = api.get("/api/v1/runs/999999")
    assert missing.status_code == 404 and missing.json() == {"detail": "no run 999999"}


def test_events_in_order(api: Api) -> None:
    run_id = api.submit()["runs"][0]["id"]
    start(api, run_id)
    with api.sessions.begin() as session:
        queries.add_event(session=session, run_id=run_id, kind="entrance", step=40, details={"p": 0.99})
    assert api.post(f"/api/v1/runs/{run_id}/cancel").status_code == 200

    body = api.get(f"/api/v1/runs/{run_id}/events").json()
    assert [e["kind"] for e in body["items"]] == ["attempt", "entrance", "cancel"]
    assert body["items"][0]["details"] == {"attempt": 1, "worker": "w1"}
    assert body["items"][1]["step"] == 40 and body["total"] == 3
    assert api.get("/api/v1/runs/999999/events").status_code == 404


def test_cancel_queued_then_finished_is_409(api: Api) -> None:
    run_id = api.submit()["runs"][0]["id"]
    cancelled = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["timings"]["finished_at"]
    before = api.counts()

    again = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 409 and again.json() == {"detail": f"run {run_id} is already cancelled"}
    assert api.counts() == before


def test_cancel_running_requests_a_stop(api: Api) -> None:
    run_id = api.submit()["runs"][0]["id"]
    start(api, run_id)
    body = api.post(f"/api/v1/runs/{run_id}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"] is True


def test_cancel_is_for_owner_or_admin(api: Api) -> None:
    run_id = api.submit()["runs"][0]["id"]
    before = api.counts()
    refused = api.post(f"/api/v1/runs/{run_id}/cancel", "bob")
    assert refused.status_code == 403
    assert refused.json() == {
        "detail": f"run {run_id} belongs to another user; only its owner or an admin may change it"
    }
    assert api.counts() == before and api.get(f"/api/v1/runs/{run_id}").json()["status"] == "queued"
    assert api.post(f"/api/v1/runs/{run_id}/cancel", "admin").json()["status"] == "cancelled"


def test_delete_run_owner_other_admin(api: Api) -> None:
    runs = api.submit(sweep={"seed": [1, 2]})["runs"]
    before = api.counts()

    assert api.delete(f"/api/v1/runs/{runs[0]['id']}", "bob").status_code == 403
    assert api.counts() == before
    assert api.delete(f"/api/v1/runs/{runs[0]['id']}").status_code == 204
    assert api.get(f"/api/v1/runs/{runs[0]['id']}").status_code == 404
    assert api.delete(f"/api/v1/runs/{runs[1]['id']}", "admin").status_code == 204
    assert api.counts()["runs"] == before["runs"] - 2
    assert api.delete(f"/api/v1/runs/{runs[1]['id']}").status_code == 404


def test_delete_running_run_is_409(api: Api) -> None:
    run_id = api.submit()["runs"][0]["id"]
    start(api, run_id)
    before = api.counts()
    response = api.delete(f"/api/v1/runs/{run_id}")
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"]
    assert api.counts() == before
