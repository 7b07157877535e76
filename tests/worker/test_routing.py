"""Queues that have workers: `device: auto` goes where a live worker listens, and the reaper
moves a run stranded on a queue nobody serves (issue 9 item 4)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from store import queries, workers
from store.models import Worker
from worker.dispatch import enqueue
from worker.reaper import reap
from worker.settings import WorkerSettings

from ..resources import BROKER_PREFIX
from .conftest import BROKER_URL

SPEC: dict[str, Any] = {
    "dataset": {"kind": "gaussian_mixture", "classes": 2, "per_class": 4, "dim": 2},
    "model": {"kind": "linear"},
    "optimizer": {"lr": 0.1, "batch_size": 2, "steps": 5},
}


def test_route_prefers_a_served_gpu_then_a_served_cpu() -> None:
    assert workers.route("auto", {"gpu", "cpu"}) == "gpu"
    assert workers.route("auto", {"cpu"}) == "cpu"
    assert workers.route("auto", set()) == "gpu"  # nobody yet: the reaper moves it later
    assert workers.route("cuda", {"cpu"}) == "gpu"  # asked for a GPU: it waits for one
    assert workers.route("cpu", {"gpu"}) == "cpu"


def _submit(sessions: sessionmaker[Session], device: str = "auto") -> int:
    with sessions.begin() as session:
        owner = queries.local_user(session=session)
        experiment = queries.create_experiment(session=session, owner=owner, spec={**SPEC, "device": device})
        (run,) = queries.list_runs(session=session, experiment_id=experiment.id)
        return run.id


def _queue(sessions: sessionmaker[Session], run_id: int) -> str:
    with sessions() as session:
        return str(queries.get_run(session=session, run_id=run_id).queue)


def test_a_run_of_device_auto_goes_to_the_queue_a_live_worker_serves(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        workers.beat(session=session, name="cpu-1", queue="cpu", host="h", pid=1)
    assert _queue(sessions, _submit(sessions)) == "cpu"
    with sessions.begin() as session:
        workers.beat(session=session, name="gpu-1", queue="gpu", host="h", pid=2)
        assert workers.served_queues(session=session) == {"cpu", "gpu"}
    assert _queue(sessions, _submit(sessions)) == "gpu"


def test_a_silent_worker_serves_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        workers.beat(session=session, name="gpu-old", queue="gpu", host="h", pid=1)
        session.get_one(Worker, "gpu-old").last_seen = queries.now() - timedelta(minutes=5)
        assert workers.served_queues(session=session) == set()
        workers.leave(session=session, name="gpu-old")
        assert workers.live(session=session, within=1e9) == []


def test_the_reaper_moves_a_stranded_auto_run_to_a_served_queue(sessions: sessionmaker[Session]) -> None:
    stranded = _submit(sessions)  # no worker yet: the gpu queue
    pinned = _submit(sessions, device="cuda")  # asked for a GPU: stays
    enqueue([stranded, pinned], sessions, BROKER_URL)
    assert _queue(sessions, stranded) == "gpu"
    with sessions.begin() as session:
        workers.beat(session=session, name="cpu-1", queue="cpu", host="h", pid=1)
    settings = WorkerSettings(database_url="unused", broker_url=BROKER_URL, queue_check_seconds=3600)
    assert reap(sessions, settings)["requeued"] == [stranded]
    assert _queue(sessions, stranded) == "cpu" and _queue(sessions, pinned) == "gpu"
    with sessions() as session:
        task = queries.get_run(session=session, run_id=stranded).task_id
        events = queries.list_events(session=session, run_id=stranded)
    assert task is not None and "rerouted to cpu" in events[-1].details["reason"]
    waiting = redis.Redis.from_url(BROKER_URL).lrange(BROKER_PREFIX + "cpu", 0, -1)
    assert any(task.encode() in message for message in waiting)
