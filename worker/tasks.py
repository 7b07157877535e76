"""Celery tasks: ids in, everything else from the database."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache

from celery.exceptions import Reject
from sqlalchemy.orm import Session, sessionmaker

from store.db import database_unreachable, database_url, make_engine, session_factory, verify_schema

from .celery_app import REAP_TASK, RUN_TASK, app
from .outage import with_database
from .reaper import reap
from .runner import execute_task
from .settings import WorkerSettings

log = logging.getLogger(__name__)


@cache
def _sessions() -> sessionmaker[Session]:
    settings = WorkerSettings()
    engine = make_engine(settings.database_url or database_url())
    verify_schema(engine)
    return session_factory(engine)


@app.task(name=RUN_TASK)
def run_task(run_id: int) -> str | None:
    """One run, with the queued runs of its experiment that can share its slice (runner.execute_task).
    While the database is unreachable the message is not consumed: the task waits (with backoff),
    then hands the message back to the queue for a later try."""
    settings = WorkerSettings()
    try:
        sessions = with_database(_sessions, "connecting", settings.database_wait)
        return execute_task(
            run_id,
            sessions,
            slice_runs=settings.slice_runs,
            slice_memory_gib=settings.slice_memory_gib,
            stale_after=timedelta(seconds=settings.stale_seconds),
            flush_rows=settings.flush_rows,
            heartbeat_seconds=settings.heartbeat_seconds,
            database_wait=settings.database_wait,
        )
    except Exception as error:
        if not database_unreachable(error):
            raise
        log.warning(
            "run %s: database unreachable for %.0f s; message returned to the queue", run_id, settings.database_wait
        )
        raise Reject(str(error), requeue=True) from error


@app.task(name=REAP_TASK)
def reap_task() -> dict[str, list[int]]:
    return reap(_sessions(), WorkerSettings())
