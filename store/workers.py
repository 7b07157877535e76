"""Which workers are alive, and which queues they serve.

Each `eos worker` beats a row of its own every few seconds (worker/presence.py). A queue is
served when some worker has beaten for it within `PRESENT_SECONDS`. The API routes runs of
`device: auto` to a served queue (a GPU one first), warns when a run's queue has no live
worker, and `eos status`, `eos runs` and the dashboard show it; the reaper moves queued
`auto` runs to a served queue once one appears.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import Worker, utcnow

PRESENT_SECONDS = 45.0  # a worker silent for longer is gone (it beats every 10 s by default)
QUEUES = ("gpu", "cpu")


def beat(*, session: Session, name: str, queue: str, host: str, pid: int) -> None:
    """Record that worker `name` is alive and serves `queue` (insert or update)."""
    worker = session.get(Worker, name)
    if worker is None:
        session.add(Worker(name=name, queue=queue, host=host, pid=pid))
    else:
        worker.queue, worker.host, worker.pid, worker.last_seen = queue, host, pid, utcnow()


def leave(*, session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))


def live(*, session: Session, within: float = PRESENT_SECONDS, now: datetime | None = None) -> list[Worker]:
    since = (now or utcnow()) - timedelta(seconds=within)
    return list(session.scalars(select(Worker).where(Worker.last_seen >= since).order_by(Worker.name)))


def served_queues(*, session: Session, within: float = PRESENT_SECONDS) -> set[str]:
    return {worker.queue for worker in live(session=session, within=within)}


def route(device: str, served: set[str] | None) -> str:
    """The queue of a run whose spec says `device`: `cpu` and `cuda` runs go to their queue; `auto`
    to the GPU queue when a live worker serves it, else to the CPU queue when one serves that, else
    to the GPU queue (the reaper moves it once a worker appears). `served=None`: prefer a GPU."""
    if device == "cpu":
        return "cpu"
    if device != "auto" or served is None:
        return "gpu"
    if "gpu" in served or "cpu" not in served:
        return "gpu"
    return "cpu"
