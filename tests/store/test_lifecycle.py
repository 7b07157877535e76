"""The run lifecycle (store.lifecycle): its edges, its events, and the database's CHECK, on PostgreSQL and SQLite."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store import lifecycle, queries
from store.errors import IllegalTransition, LostOwnership
from store.lifecycle import FINISHED, TRANSITIONS, RunStatus
from store.models import RUN_STATUSES, Run

SPEC = {
    "seed": 0,
    "device": "cpu",
    "dataset": {"kind": "gaussian_mixture", "classes": 2, "per_class": 4, "dim": 2},
    "model": {"kind": "linear"},
    "optimizer": {"lr": 0.1, "batch_size": 2, "steps": 5},
}
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
STALE = timedelta(minutes=2)


def _run(session: Session) -> Run:
    owner = queries.local_user(session=session)
    experiment = queries.create_experiment(session=session, owner=owner, spec=SPEC)
    (run,) = queries.list_runs(session=session, experiment_id=experiment.id)
    return run


def _kinds(session: Session, run: Run) -> list[str]:
    return [e.kind for e in queries.list_events(session=session, run_id=run.id)]


def test_the_states_agree_everywhere() -> None:
    """The enum, the model's CHECK and the migration's CHECK list the same states."""
    assert tuple(RunStatus) == RUN_STATUSES
    migration = (MIGRATIONS / "2026_12_02_0002_lifecycle.py").read_text()
    listed = re.search(r"STATUSES = \((.*?)\)", migration, re.S)
    assert listed is not None and tuple(re.findall(r'"(\w+)"', listed.group(1))) == RUN_STATUSES


def test_finished_states_are_final_and_queued_cannot_finish_without_running() -> None:
    assert all(TRANSITIONS[status] == frozenset() for status in FINISHED)
    assert RunStatus.COMPLETED not in TRANSITIONS[RunStatus.QUEUED]
    assert set(TRANSITIONS) == set(RunStatus)


def test_a_run_through_its_life_writes_one_event_per_move(session: Session) -> None:
    run = _run(session)
    claimed = lifecycle.claim(session=session, run_id=run.id, worker="w", stale_after=STALE)
    assert claimed is run and run.status == RunStatus.RUNNING and run.attempts == 1
    assert lifecycle.beat(session=session, run_id=run.id, attempt=1, step=3, steps=5) is False
    lifecycle.requeue(session=session, run=run, reason="heartbeat stale")
    assert run.status == RunStatus.QUEUED and run.task_id is None
    with pytest.raises(LostOwnership):  # the silent attempt is fenced out
        lifecycle.beat(session=session, run_id=run.id, attempt=1, step=4, steps=5)
    lifecycle.claim(session=session, run_id=run.id, worker="w2", stale_after=STALE)
    lifecycle.finish(session=session, run=run, status=RunStatus.COMPLETED)
    assert run.status == "completed" and run.finished_at is not None
    assert _kinds(session, run) == ["attempt", "requeue", "attempt", "finish"]


def test_illegal_edges_raise_and_change_nothing(session: Session) -> None:
    run = _run(session)
    with pytest.raises(IllegalTransition):
        lifecycle.finish(session=session, run=run, status=RunStatus.COMPLETED)  # never ran
    assert run.status == RunStatus.QUEUED
    lifecycle.cancel(session=session, run=run)
    assert run.status == RunStatus.CANCELLED and _kinds(session, run) == ["cancel", "finish"]
    for move in (
        lambda: lifecycle.cancel(session=session, run=run),
        lambda: lifecycle.fail(session=session, run=run, error="late"),
        lambda: lifecycle.requeue(session=session, run=run, reason="late"),
    ):
        with pytest.raises(IllegalTransition):
            move()
    assert run.status == RunStatus.CANCELLED and run.error is None
    assert lifecycle.claim(session=session, run_id=run.id, worker="w", stale_after=STALE) is None


def test_a_fresh_heartbeat_keeps_a_second_worker_out(session: Session) -> None:
    run = _run(session)
    lifecycle.claim(session=session, run_id=run.id, worker="a", stale_after=STALE)
    assert lifecycle.claim(session=session, run_id=run.id, worker="b", stale_after=STALE) is None
    taken = lifecycle.claim(session=session, run_id=run.id, worker="b", stale_after=timedelta(seconds=-1))
    assert taken is run and run.attempts == 2 and run.worker == "b"


def test_the_database_refuses_a_state_outside_the_lifecycle(session: Session) -> None:
    run = _run(session)
    with pytest.raises(IntegrityError):
        session.execute(text("UPDATE runs SET status = 'paused' WHERE id = :id"), {"id": run.id})
