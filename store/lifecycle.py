"""The run lifecycle, in one place: its states, the allowed transitions, and the functions
that move a run along them, each checking its edge and writing its event.

    queued --claim--> running --finish--> completed | diverged | cancelled
      |                  |  \\--fail----> failed
      |                  |   \\-requeue-> queued      (the reaper: its worker went silent)
      |                  \\--claim-----> running     (another worker takes over a stale run)
      \\--cancel--> cancelled,  \\--fail--> failed     (the reaper: out of attempts, or unsendable)

Finished states are final. The database enforces the set of states (a CHECK constraint);
this module enforces the edges. Every function takes `session=` keyword-only and never
commits: the caller (a route, a task, the reaper) owns the transaction.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from eos_core.summary import RunSummary

from .errors import IllegalTransition, LostOwnership
from .models import Event, Run, as_utc, utcnow


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.QUEUED,
            RunStatus.COMPLETED,
            RunStatus.DIVERGED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        }
    ),
    **{status: frozenset() for status in FINISHED},
}


def _move(run: Run, to: RunStatus) -> None:
    current = RunStatus(run.status)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"run {run.id}: {current} -> {to} is not a lifecycle edge")
    run.status = to


def _event(session: Session, run: Run, kind: str, details: dict[str, Any], step: int | None = None) -> None:
    session.add(Event(run_id=run.id, kind=kind, step=step, details=details))


def _locked(session: Session, run_id: int) -> Run | None:
    return session.scalars(select(Run).where(Run.id == run_id).with_for_update()).one_or_none()


def mark_sent(*, session: Session, run: Run, task_id: str) -> None:
    """The run's message went to the broker (not a transition: it stays queued)."""
    run.task_id = task_id
    run.enqueued_at = utcnow()


def claim(*, session: Session, run_id: int, worker: str, stale_after: timedelta) -> Run | None:
    """Start an attempt: a queued run, or a running one whose worker went silent -> running.

    Returns None when there is nothing to do (finished, cancelled, deleted, or running
    elsewhere with a fresh heartbeat): a redelivered or duplicated message is then harmless.
    The row lock makes two workers racing for one run take turns.
    """
    run = _locked(session, run_id)
    if run is None or run.status in FINISHED:
        return None
    if run.cancel_requested:
        finish(session=session, run=run, status=RunStatus.CANCELLED)
        return None
    beating = run.heartbeat_at is not None and as_utc(run.heartbeat_at) > utcnow() - stale_after
    if run.status == RunStatus.RUNNING and beating:
        return None
    _move(run, RunStatus.RUNNING)
    run.attempts += 1
    run.worker = worker
    run.error = None
    run.started_at = run.heartbeat_at = utcnow()
    _event(session, run, "attempt", {"attempt": run.attempts, "worker": worker})
    return run


def queued_mates(*, session: Session, run: Run, limit: int) -> list[Run]:
    """Queued runs of `run`'s experiment and queue (not `run`, none with a cancellation pending),
    oldest first: those a worker may claim to train in one slice with `run`. Not locked: each is
    then claimed (claim locks and checks it), and one claimed meanwhile elsewhere is skipped."""
    stmt = (
        select(Run)
        .where(
            Run.experiment_id == run.experiment_id,
            Run.queue == run.queue,
            Run.status == RunStatus.QUEUED,
            Run.id != run.id,
            Run.cancel_requested.is_(False),
        )
        .order_by(Run.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def beat(*, session: Session, run_id: int, attempt: int, step: int, steps: int) -> bool:
    """Record progress for attempt `attempt`; returns True when a cancellation was requested.

    Fenced: only the attempt that holds the run (status running, same attempt number) may
    beat. Any other raises LostOwnership, and the row lock taken here stays held until the
    caller's transaction ends, so trace rows written in the same transaction are this
    attempt's alone.
    """
    stmt = (
        update(Run)
        .where(Run.id == run_id, Run.attempts == attempt, Run.status == RunStatus.RUNNING)
        .values(step=step, progress=step / max(steps, 1), heartbeat_at=utcnow())
        .returning(Run.cancel_requested)
    )
    cancel = session.execute(stmt).scalar_one_or_none()
    if cancel is None:
        raise LostOwnership(f"run {run_id}: attempt {attempt} no longer owns it")
    return bool(cancel)


def owned(*, session: Session, run_id: int, attempt: int) -> Run:
    """The run, locked, if attempt `attempt` still holds it; else LostOwnership."""
    run = _locked(session, run_id)
    if run is None:
        raise LostOwnership(f"run {run_id} was deleted")
    if run.attempts != attempt or run.status != RunStatus.RUNNING:
        raise LostOwnership(
            f"run {run_id}: attempt {attempt} no longer owns it (now {run.status}, attempt {run.attempts})"
        )
    return run


def finish(
    *,
    session: Session,
    run: Run,
    status: RunStatus,
    summary: RunSummary | dict[str, Any] | None = None,
    dataset_info: dict[str, Any] | None = None,
) -> None:
    """running -> completed | diverged | cancelled (queued -> cancelled), with the result."""
    if status not in (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.CANCELLED):
        raise IllegalTransition(f"finish takes completed, diverged or cancelled, not {status}")
    _move(run, status)
    run.finished_at = run.heartbeat_at = utcnow()
    if summary is not None:
        run.summary = summary.to_json() if isinstance(summary, RunSummary) else summary
        run.progress = 1.0 if status == RunStatus.COMPLETED else run.progress
    if dataset_info is not None:
        run.dataset_info = dataset_info
    _event(session, run, "finish", {"status": str(status), "attempt": run.attempts}, run.step)


def fail(*, session: Session, run: Run, error: str) -> None:
    """-> failed, with the reason."""
    _move(run, RunStatus.FAILED)
    run.finished_at = run.heartbeat_at = utcnow()
    run.error = error
    _event(session, run, "fail", {"error": error[:500], "attempt": run.attempts}, run.step)


def requeue(*, session: Session, run: Run, reason: str) -> None:
    """running -> queued (its worker went silent), or a queued run whose message was lost, again.

    The attempt number stays: the next claim increments it, so the silent attempt, if it
    wakes up, is fenced out by `beat`.
    """
    previous = RunStatus(run.status)
    if previous != RunStatus.QUEUED:
        _move(run, RunStatus.QUEUED)
    run.heartbeat_at = None
    run.task_id = None
    _event(session, run, "requeue", {"from": str(previous), "attempts": run.attempts, "reason": reason}, run.step)


def cancel(*, session: Session, run: Run) -> None:
    """Queued runs are cancelled at once; running ones stop at their next heartbeat."""
    if run.status in FINISHED:
        raise IllegalTransition(f"run {run.id} is already {run.status}")
    run.cancel_requested = True
    _event(session, run, "cancel", {}, run.step)
    if run.status == RunStatus.QUEUED:
        finish(session=session, run=run, status=RunStatus.CANCELLED)


def stale(*, session: Session, heartbeat_timeout: timedelta, queue_timeout: timedelta) -> list[Run]:
    """Running runs whose heartbeat went stale, and queued runs whose message may be lost."""
    now = utcnow()
    # Row locks (skipping rows a worker holds): PostgreSQL re-checks the condition once locked,
    # so a run claimed or beating meanwhile drops out instead of being requeued under it.
    running = (
        select(Run)
        .where(Run.status == RunStatus.RUNNING, Run.heartbeat_at < now - heartbeat_timeout)
        .with_for_update(skip_locked=True)
    )
    queued = (
        select(Run)
        .where(
            Run.status == RunStatus.QUEUED,
            (Run.enqueued_at.is_(None) & (Run.created_at < now - queue_timeout))
            | (Run.enqueued_at < now - queue_timeout),
        )
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(running)) + list(session.scalars(queued))
