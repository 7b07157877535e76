"""Celery tasks: ids in, everything else from the database."""

from __future__ import annotations

from datetime import timedelta
from functools import cache

from sqlalchemy.orm import Session, sessionmaker

from store.db import database_url, make_engine, session_factory, verify_schema

from .celery_app import REAP_TASK, RUN_TASK, app
from .reaper import reap
from .runner import execute_run
from .settings import WorkerSettings


@cache
def _sessions() -> sessionmaker[Session]:
    settings = WorkerSettings()
    engine = make_engine(settings.database_url or database_url())
    verify_schema(engine)
    return session_factory(engine)


@app.task(name=RUN_TASK)
def run_task(run_id: int) -> str | None:
    settings = WorkerSettings()
    return execute_run(
        run_id,
        _sessions(),
        stale_after=timedelta(seconds=settings.stale_seconds),
        flush_rows=settings.flush_rows,
        heartbeat_seconds=settings.heartbeat_seconds,
    )


@app.task(name=REAP_TASK)
def reap_task() -> dict[str, list[int]]:
    return reap(_sessions(), WorkerSettings())
