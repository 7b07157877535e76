"""Sending runs to the broker, only after the transaction that created them committed."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from store import lifecycle, queries

from .celery_app import RUN_TASK, make_app


def enqueue(run_ids: Iterable[int], sessions: sessionmaker[Session], broker_url: str | None = None) -> None:
    """One task per run on its queue; the task id is recorded so the reaper can look for it."""
    app = make_app(broker_url)
    for run_id in run_ids:
        with sessions.begin() as session:
            run = queries.get_run(session=session, run_id=run_id)
            if run.status != lifecycle.RunStatus.QUEUED:
                continue
            result = app.send_task(RUN_TASK, args=[run_id], queue=run.queue)
            lifecycle.mark_sent(session=session, run=run, task_id=result.id)
