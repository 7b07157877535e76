"""Faults against real processes: SIGKILL mid-run, a lost broker message, cancellation, divergence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from eos_core import RunResult, RunSpec, train, train_slice
from eos_core.trace import METRICS as SPEC_METRICS
from store import lifecycle, queries
from store.errors import LostOwnership
from store.traces import append_trace, read_trace, trace_steps
from worker.dispatch import enqueue
from worker.reaper import reap
from worker.settings import WorkerSettings

from ..resources import BROKER_PREFIX
from .conftest import BROKER_URL, WorkerProcess, wait_for

pytestmark = pytest.mark.slow  # real worker processes training real runs

SPEC: dict[str, Any] = {
    "name": "worker-test",
    "device": "cpu",
    "dataset": {"classes": 4, "per_class": 30, "dim": 10, "separation": 1.0},
    "optimizer": {"lr": 100.0, "batch_size": 8, "steps": 400},
    "instrument": {"drift_samples": 8, "drift_max_samples": 8, "sharpness_every": 50, "test_every": 100},
}


def _submit(
    sessions: sessionmaker[Session], spec: dict[str, Any], sweep: dict[str, list[Any]] | None = None, send: bool = True
) -> list[int]:
    with sessions.begin() as session:
        owner = queries.local_user(session=session)
        experiment = queries.create_experiment(session=session, owner=owner, spec=spec, sweep=sweep)
        ids = [r.id for r in queries.list_runs(session=session, experiment_id=experiment.id)]
    if send:
        enqueue(ids, sessions, BROKER_URL)
    return ids


def _unacked_holds(task_id: str) -> bool:
    held = redis.Redis.from_url(BROKER_URL).hvals(BROKER_PREFIX + "unacked")
    return any(task_id.encode() in message for message in held)


def _run(sessions: sessionmaker[Session], run_id: int) -> Any:
    with sessions() as session:
        return queries.get_run(session=session, run_id=run_id)


def _status(sessions: sessionmaker[Session], run_id: int) -> str:
    return str(_run(sessions, run_id).status)


def _settings(**changes: Any) -> WorkerSettings:
    return WorkerSettings(database_url="unused", broker_url=BROKER_URL, **changes)


def _stored(sessions: sessionmaker[Session], run_id: int) -> dict[str, np.ndarray]:
    with sessions() as session:
        return read_trace(session=session, run_id=run_id)


def test_sweep_runs_and_stores_exactly_what_train_slice_produces(
    sessions: sessionmaker[Session], start_worker: Callable[[str], WorkerProcess]
) -> None:
    start_worker("cpu")
    ids = _submit(sessions, SPEC, {"optimizer.lr": [10.0, 100.0]})
    wait_for(lambda: all(_status(sessions, i) == "completed" for i in ids), 120, "both runs to complete")
    # The worker trains the sweep as one slice (worker.slicing): the same slice, trained here, is the reference
    # (in float32 a run stacked with others may differ from the run alone by rounding).
    outcomes = train_slice([RunSpec.model_validate(_run(sessions, i).spec) for i in ids])
    for run_id, expected in zip(ids, outcomes, strict=True):
        assert isinstance(expected, RunResult)
        run = _run(sessions, run_id)
        stored = _stored(sessions, run_id)
        for name, column in expected.trace.items():
            np.testing.assert_array_equal(stored[name], column, err_msg=name)
        assert run.summary["entrance_step"] == expected.summary["entrance_step"]
        assert run.summary["rate_slope"] == expected.summary["rate_slope"]
        with sessions() as session:
            events = queries.list_events(session=session, run_id=run_id)
        exits = [e.step for e in events if e.kind == "exit"]
        assert exits == expected.summary["exit_steps"]


def test_worker_killed_mid_run_then_restarted_completes_with_one_row_per_step(
    sessions: sessionmaker[Session], start_worker: Callable[[str], WorkerProcess]
) -> None:
    spec = {
        **SPEC,
        "optimizer": {**SPEC["optimizer"], "steps": 1500},
        "instrument": {**SPEC["instrument"], "drift_samples": 8, "drift_max_samples": 8},
    }
    first = start_worker("cpu")
    (run_id,) = _submit(sessions, spec)
    wait_for(lambda: _run(sessions, run_id).step > 400, 120, "the run to be well under way")
    first.kill()
    with sessions() as session:
        partial = len(trace_steps(session=session, run_id=run_id))
    assert 0 < partial < 1501 and _status(sessions, run_id) == "running"
    # The dead worker's heartbeat goes stale; the reaper requeues the run for a new worker.
    dead_task = _run(sessions, run_id).task_id
    assert dead_task is not None and _unacked_holds(dead_task)  # SIGKILL: never acknowledged
    wait_for(lambda: reap(sessions, _settings(stale_seconds=2))["requeued"] == [run_id], 30, "the reaper")
    assert not _unacked_holds(dead_task)  # not left for the 7-day visibility timeout to redeliver
    start_worker("cpu")
    wait_for(lambda: _status(sessions, run_id) == "completed", 180, "the retried run to complete")
    with sessions() as session:
        steps = trace_steps(session=session, run_id=run_id)
        kinds = [e.kind for e in queries.list_events(session=session, run_id=run_id)]
    np.testing.assert_array_equal(steps, np.arange(1501))
    run = _run(sessions, run_id)
    assert run.attempts == 2 and kinds.count("attempt") == 2 and kinds.count("requeue") == 1
    assert kinds.count("finish") == 1
    expected = train(RunSpec.model_validate(run.spec))
    np.testing.assert_array_equal(_stored(sessions, run_id)["loss"], expected.trace["loss"])


def test_queued_run_whose_message_is_lost_is_recovered_by_the_reaper(
    sessions: sessionmaker[Session], start_worker: Callable[[str], WorkerProcess]
) -> None:
    spec = {**SPEC, "device": "auto"}  # routed to the gpu queue, where no worker listens yet
    (run_id,) = _submit(sessions, spec)
    assert _run(sessions, run_id).queue == "gpu"
    settings = _settings(queue_check_seconds=0)
    assert reap(sessions, settings) == {"requeued": [], "failed": []}  # the message is still there
    lost_task = _run(sessions, run_id).task_id
    redis.Redis.from_url(BROKER_URL).delete(BROKER_PREFIX + "gpu")  # the broker loses it (restarted empty)
    assert reap(sessions, settings)["requeued"] == [run_id]
    assert _run(sessions, run_id).task_id != lost_task
    start_worker("gpu")
    wait_for(lambda: _status(sessions, run_id) == "completed", 120, "the recovered run to complete")


def test_reaper_gives_up_after_the_retry_limit(sessions: sessionmaker[Session]) -> None:
    (run_id,) = _submit(sessions, SPEC, send=False)
    with sessions.begin() as session:
        run = queries.get_run(session=session, run_id=run_id)
        run.status, run.attempts = "running", 3
        run.heartbeat_at = queries.now() - timedelta(hours=1)
    assert reap(sessions, _settings(max_attempts=3))["failed"] == [run_id]
    run = _run(sessions, run_id)
    assert run.status == "failed" and "3 attempts" in run.error


def test_cancelling_a_running_run_stops_it_at_the_next_chunk(
    sessions: sessionmaker[Session], start_worker: Callable[[str], WorkerProcess]
) -> None:
    start_worker("cpu")
    # Far more steps than any machine trains before the cancellation lands: no timing luck needed.
    spec = {**SPEC, "optimizer": {**SPEC["optimizer"], "steps": 5_000_000}}
    (run_id,) = _submit(sessions, spec)
    wait_for(lambda: _run(sessions, run_id).step > 100, 120, "the run to start")
    with sessions.begin() as session:
        lifecycle.cancel(session=session, run=queries.get_run(session=session, run_id=run_id))
    wait_for(lambda: _status(sessions, run_id) == "cancelled", 30, "the cancellation")
    with sessions() as session:
        steps = trace_steps(session=session, run_id=run_id)
    assert 100 < len(steps) < 5_000_001
    np.testing.assert_array_equal(steps, np.arange(len(steps)))  # what was stored is kept, in order
    run = _run(sessions, run_id)
    assert run.summary is not None and run.summary["last_step"] == steps[-1]  # the analysis of what ran
    assert run.step == steps[-1]  # the run's step is where its stored trace ends


def test_diverging_run_ends_as_diverged_with_its_trace(
    sessions: sessionmaker[Session], start_worker: Callable[[str], WorkerProcess]
) -> None:
    start_worker("cpu")
    spec = {
        **SPEC,
        "model": {"kind": "mlp", "width": 8, "depth": 3, "activation": "relu"},
        "optimizer": {**SPEC["optimizer"], "lr": 1e37},
    }
    (run_id,) = _submit(sessions, spec)
    wait_for(lambda: _status(sessions, run_id) in ("diverged", "failed"), 120, "the run to end")
    run = _run(sessions, run_id)
    assert run.status == "diverged", run.error
    stored = _stored(sessions, run_id)
    assert len(stored["step"]) >= 2 and np.isfinite(stored["loss"][0])
    with sessions() as session:
        kinds = [e.kind for e in queries.list_events(session=session, run_id=run_id)]
    assert "divergence" in kinds


def test_an_attempt_that_lost_the_run_can_no_longer_write(sessions: sessionmaker[Session]) -> None:
    (run_id,) = _submit(sessions, SPEC, send=False)
    stale = timedelta(seconds=0)
    with sessions.begin() as session:
        first = lifecycle.claim(session=session, run_id=run_id, worker="a", stale_after=stale)
        assert first is not None and first.attempts == 1
    with sessions.begin() as session:  # the reaper gave up on worker a; worker b claims the run
        second = lifecycle.claim(session=session, run_id=run_id, worker="b", stale_after=stale)
        assert second is not None and second.attempts == 2
    chunk = {name: np.zeros(3) for name in ("step", *SPEC_METRICS)}
    chunk["step"] = np.arange(3)
    with pytest.raises(LostOwnership), sessions.begin() as session:
        lifecycle.beat(session=session, run_id=run_id, attempt=1, step=3, steps=400)
        append_trace(session=session, run_id=run_id, chunk=chunk)
    with sessions.begin() as session:
        assert lifecycle.beat(session=session, run_id=run_id, attempt=2, step=3, steps=400) is False
        assert len(trace_steps(session=session, run_id=run_id)) == 0
        with pytest.raises(LostOwnership):
            lifecycle.owned(session=session, run_id=run_id, attempt=1)
