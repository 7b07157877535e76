"""The reaper: the database is the source of truth for what should be running.

A running run whose heartbeat went stale (its worker died) and a queued run whose broker
message vanished (a Redis restart, a purge) are enqueued again, up to a retry limit; each
attempt is recorded as an event by the task that claims it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from sqlalchemy.orm import Session, sessionmaker

from store import queries
from store.models import Run

from .dispatch import enqueue
from .settings import WorkerSettings

log = logging.getLogger(__name__)


def message_present(broker_url: str, queue: str, task_id: str | None, prefix: str = "") -> bool:
    """Is the task waiting in its Redis queue or held unacknowledged by a worker?"""
    if task_id is None or not broker_url.startswith("redis"):
        return task_id is not None  # other brokers: trust the message while we cannot look
    client = redis.Redis.from_url(broker_url)
    needle = task_id.encode()
    waiting = client.lrange(prefix + queue, 0, -1)
    unacked = client.hvals(prefix + "unacked")
    return any(needle in raw for raw in [*waiting, *unacked])


def reap(sessions: sessionmaker[Session], settings: WorkerSettings) -> dict[str, list[int]]:
    """One pass: requeue what was lost, fail what ran out of attempts."""
    requeue: list[int] = []
    failed: list[int] = []
    with sessions.begin() as session:
        candidates = queries.stale_runs(
            session=session,
            heartbeat_timeout=timedelta(seconds=settings.stale_seconds),
            queue_timeout=timedelta(seconds=settings.queue_check_seconds),
        )
        for run in candidates:
            if run.status == "queued" and message_present(
                settings.broker_url, run.queue, run.task_id, settings.broker_prefix
            ):
                continue  # still waiting its turn
            if _out_of_attempts(run, settings.max_attempts):
                queries.finish_run(
                    session=session,
                    run=run,
                    status="failed",
                    error=f"gave up after {run.attempts} attempts (worker lost each time)",
                )
                failed.append(run.id)
                continue
            queries.add_event(
                session=session,
                run_id=run.id,
                kind="attempt",
                step=run.step,
                details={"requeued_from": run.status, "attempts": run.attempts},
            )
            run.status = "queued"
            run.heartbeat_at = None
            requeue.append(run.id)
    if requeue:
        enqueue(requeue, sessions, settings.broker_url)
        log.warning("reaper requeued runs %s", requeue)
    return {"requeued": requeue, "failed": failed}


def _out_of_attempts(run: Run, max_attempts: int) -> bool:
    return run.status == "running" and run.attempts >= max_attempts
