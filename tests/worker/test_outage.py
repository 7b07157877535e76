"""Outages do not end the processes that recover from them (fast, no services: failures are injected)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from store import lifecycle, queries
from store.db import make_engine, session_factory, upgrade
from store.traces import trace_steps
from worker import outage, reaper
from worker.runner import execute_run
from worker.settings import WorkerSettings


def _down() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_with_database_retries_until_the_database_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outage.time, "sleep", lambda _s: None)
    answers: list[Any] = [_down(), _down(), "ok"]

    def action() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    assert outage.with_database(action, "test", wait_seconds=60) == "ok" and answers == []


def test_with_database_gives_up_after_its_wait_and_never_retries_a_bug() -> None:
    def down() -> None:
        raise _down()

    with pytest.raises(OperationalError):
        outage.with_database(down, "test", wait_seconds=0)
    calls: list[int] = []

    def bug() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate"))

    with pytest.raises(IntegrityError):
        outage.with_database(bug, "test", wait_seconds=60)
    assert calls == [1]


def test_the_reaper_loop_outlives_failed_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis or PostgreSQL away: the pass fails, the loop logs, waits and tries again."""
    passes: list[Any] = [ConnectionError("redis down"), _down(), {"requeued": [7], "failed": []}]
    reports: list[dict[str, list[int]]] = []
    stop = threading.Event()

    def one_pass(_sessions: Any, _settings: Any) -> dict[str, list[int]]:
        outcome = passes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        stop.set()
        return dict(outcome)

    monkeypatch.setattr(reaper, "reap", one_pass)
    monkeypatch.setattr(stop, "wait", lambda _s=None: stop.is_set())  # no real sleeping
    reaper.reap_forever(None, WorkerSettings(reap_every=0.01), reports.append, stop)  # type: ignore[arg-type]
    assert reports == [{"requeued": [7], "failed": []}] and passes == []


def test_a_run_rides_out_a_database_outage_and_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first two heartbeats find the database away; the run waits, goes on and completes in full."""
    engine = make_engine(f"sqlite:///{tmp_path / 'eos.sqlite'}")
    upgrade(engine)
    sessions = session_factory(engine)
    spec = {
        "device": "cpu",
        "dataset": {"kind": "gaussian_mixture", "classes": 2, "per_class": 6, "dim": 3},
        "model": {"kind": "linear"},
        "optimizer": {"lr": 0.5, "batch_size": 4, "steps": 100},
        "instrument": {"drift_samples": 0, "sharpness_every": 0, "test_every": 0},
    }
    with sessions.begin() as session:
        experiment = queries.create_experiment(session=session, owner=queries.local_user(session=session), spec=spec)
        (run,) = queries.list_runs(session=session, experiment_id=experiment.id)
        run_id = run.id
    real_beat, failures = lifecycle.beat, [_down(), _down()]

    def flaky_beat(**kwargs: Any) -> bool:
        if failures:
            raise failures.pop(0)
        return real_beat(**kwargs)

    monkeypatch.setattr(lifecycle, "beat", flaky_beat)
    monkeypatch.setattr(outage.time, "sleep", lambda _s: None)
    assert execute_run(run_id, sessions, flush_rows=16, heartbeat_seconds=60) == "completed"
    with sessions() as session:
        done = queries.get_run(session=session, run_id=run_id)
        assert done.status == "completed" and list(trace_steps(session=session, run_id=run_id)) == list(range(101))
    assert failures == []
    engine.dispose()
