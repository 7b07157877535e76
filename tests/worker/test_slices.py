"""Sweep slices in the service (issue 10, item 2): the compatible runs of a sweep train in one
eos_core.train_slice call, and each keeps its own claim, heartbeat, trace, events, summary and
status. Against the real PostgreSQL; the runs are tiny, the faults are injected at a chosen step
from the run's own progress callback, so nothing depends on timing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

import worker.runner
from eos_core.training import train_slice as real_train_slice
from store import lifecycle, queries
from store.errors import LostOwnership
from store.traces import delete_trace, read_trace, trace_steps
from worker.dispatch import enqueue
from worker.executors import InProcessExecutor
from worker.reaper import reap
from worker.runner import execute_slice, execute_task
from worker.settings import WorkerSettings
from worker.slicing import plan_runs, slice_mates

from ..resources import BROKER_PREFIX
from .conftest import BROKER_URL, WorkerProcess, wait_for

STEPS = 400
SPEC: dict[str, Any] = {
    "name": "slice-test",
    "seed": 0,
    "device": "cpu",
    "dataset": {"kind": "gaussian_mixture", "classes": 3, "per_class": 8, "dim": 4},
    "model": {"kind": "linear"},
    "optimizer": {"lr": 1.0, "batch_size": 4, "steps": STEPS},
    "instrument": {
        "drift_samples": 8,
        "drift_max_samples": 8,
        "drift_every": 2,
        "sharpness_every": 50,
        "test_every": 100,
        "chunk_rows": 8,
    },
}
LRS = [0.5, 1.0, 2.0]
# Small writes, so a run's sink beats (and learns of a cancellation or a lost claim) every 16 rows;
# a heartbeat thread that never fires on its own, so the sinks' writes are the only beats.
FAST: dict[str, Any] = {"flush_rows": 16, "heartbeat_seconds": 600.0}


Cell = tuple[int, float]  # a run of the sweep by its (batch size, step size)


class Spy:
    """worker.runner.train_slice, recording each call's runs (as cells) and their outcomes."""

    def __init__(self) -> None:
        self.calls: list[list[Cell]] = []
        self.outcomes: dict[Cell, Any] = {}

    def __call__(self, specs: Sequence[Any], sinks: Any = None, progress: Any = None, **kwargs: Any) -> Any:
        outcomes = real_train_slice(specs, sinks, progress, **kwargs)
        cells = [(s.optimizer.batch_size, s.optimizer.lr) for s in specs]
        self.calls.append(cells)
        self.outcomes.update(zip(cells, outcomes, strict=True))
        return outcomes


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    monkeypatch.setattr(worker.runner, "train_slice", spy)
    return spy


def _submit(sessions: sessionmaker[Session], sweep: dict[str, list[Any]], spec: dict[str, Any] = SPEC) -> list[int]:
    with sessions.begin() as session:
        owner = queries.local_user(session=session)
        experiment = queries.create_experiment(session=session, owner=owner, spec=spec, sweep=sweep)
        return [r.id for r in queries.list_runs(session=session, experiment_id=experiment.id)]


def _run(sessions: sessionmaker[Session], run_id: int) -> Any:
    with sessions() as session:
        return queries.get_run(session=session, run_id=run_id)


def _kinds(sessions: sessionmaker[Session], run_id: int) -> list[str]:
    with sessions() as session:
        return [e.kind for e in queries.list_events(session=session, run_id=run_id)]


def _steps(sessions: sessionmaker[Session], run_id: int) -> np.ndarray:
    with sessions() as session:
        return trace_steps(session=session, run_id=run_id)


def _cell(sessions: sessionmaker[Session], run_id: int) -> Cell:
    optimizer = _run(sessions, run_id).spec["optimizer"]
    return int(optimizer["batch_size"]), float(optimizer["lr"])


def _cells(sessions: sessionmaker[Session], run_ids: Sequence[int]) -> list[Cell]:
    return [_cell(sessions, i) for i in run_ids]


def at_step(run_id: int, step: int, action: Callable[[], object]) -> Callable[[int, int, int], None]:
    """A slice progress callback that does `action` once, when run `run_id` reports step >= `step`."""
    done: list[bool] = []

    def progress(rid: int, at: int, _steps: int) -> None:
        if rid == run_id and at >= step and not done:
            done.append(True)
            action()

    return progress


def _assert_completed_in_full(sessions: sessionmaker[Session], spy: Spy, run_id: int) -> None:
    """Completed once, one row per step, and exactly what the engine returned for it, summary and events too."""
    run = _run(sessions, run_id)
    result = spy.outcomes[_cell(sessions, run_id)]
    assert run.status == "completed" and run.attempts == 1 and run.step == STEPS and run.progress == 1.0
    with sessions() as session:
        stored = read_trace(session=session, run_id=run_id)
        derived = [
            (e.kind, e.step)
            for e in queries.list_events(session=session, run_id=run_id, kinds=worker.runner.DERIVED_EVENTS)
        ]
    np.testing.assert_array_equal(stored["step"], np.arange(STEPS + 1))
    for name, column in result.trace.items():
        np.testing.assert_array_equal(stored[name], column, err_msg=f"run {run_id}: {name}")
    assert run.summary["final_loss"] == result.summary["final_loss"]
    assert run.summary["entrance_step"] == result.summary["entrance_step"]
    assert derived == [(kind, step) for kind, step, _ in queries.summary_events(result.summary)]
    kinds = _kinds(sessions, run_id)
    assert kinds.count("attempt") == 1 and kinds.count("finish") == 1 and "cancel" not in kinds


def test_a_slice_of_three_runs_is_one_train_slice_call_and_each_run_is_stored_as_its_own(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    ids = _submit(sessions, {"optimizer.lr": LRS})
    seen: dict[int, int] = {}

    def progress(run_id: int, step: int, _steps: int) -> None:
        seen[run_id] = max(seen.get(run_id, 0), step)

    assert execute_slice(ids, sessions, progress=progress, **FAST) == dict.fromkeys(ids, "completed")
    assert spy.calls == [_cells(sessions, ids)]  # one call, all three runs
    assert seen == dict.fromkeys(ids, STEPS)  # each run reported its own progress
    losses = set()
    for run_id in ids:
        _assert_completed_in_full(sessions, spy, run_id)
        losses.add(float(_run(sessions, run_id).summary["final_loss"]))
    assert len(losses) == 3  # three different trajectories, not one stored three times
    # Claimed again (a redelivered message), they are left alone.
    assert execute_slice(ids, sessions, **FAST) == dict.fromkeys(ids)
    assert len(spy.calls) == 1 and all(_run(sessions, i).attempts == 1 for i in ids)


def test_cancelling_one_run_mid_slice_stops_it_alone_and_keeps_its_rows(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    first, victim, last = _submit(sessions, {"optimizer.lr": LRS})

    def cancel() -> None:
        with sessions.begin() as session:
            lifecycle.cancel(session=session, run=queries.get_run(session=session, run_id=victim))

    statuses = execute_slice([first, victim, last], sessions, progress=at_step(victim, 100, cancel), **FAST)
    assert statuses == {first: "completed", victim: "cancelled", last: "completed"}
    assert spy.calls == [_cells(sessions, [first, victim, last])]
    steps = _steps(sessions, victim)
    assert 100 <= len(steps) - 1 < STEPS  # stopped soon after the request, well before the end
    np.testing.assert_array_equal(steps, np.arange(len(steps)))  # every row it recorded is kept, in order
    run = _run(sessions, victim)
    assert run.summary is not None and run.summary["last_step"] == steps[-1] and run.step == steps[-1]
    assert spy.outcomes[_cell(sessions, victim)].status == "stopped"
    assert _kinds(sessions, victim).count("finish") == 1
    for run_id in (first, last):
        _assert_completed_in_full(sessions, spy, run_id)


def test_a_run_whose_claim_is_taken_mid_slice_ends_alone_and_writes_nothing_more(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    first, taken, last = _submit(sessions, {"optimizer.lr": LRS})

    def another_worker_claims() -> None:  # as a worker does after the reaper gave this attempt up
        with sessions.begin() as session:
            run = lifecycle.claim(session=session, run_id=taken, worker="thief", stale_after=timedelta(0))
            assert run is not None and run.attempts == 2
            delete_trace(session=session, run_id=taken)

    statuses = execute_slice(
        [first, taken, last], sessions, progress=at_step(taken, 100, another_worker_claims), **FAST
    )
    assert statuses == {first: "completed", taken: None, last: "completed"}
    assert isinstance(spy.outcomes[_cell(sessions, taken)], LostOwnership)  # its own sink ended it; the engine went on
    run = _run(sessions, taken)
    assert (run.status, run.attempts, run.worker) == ("running", 2, "thief")  # the new owner's, untouched
    assert len(_steps(sessions, taken)) == 0  # the old attempt wrote nothing after losing the run
    assert "finish" not in _kinds(sessions, taken) and "fail" not in _kinds(sessions, taken)
    for run_id in (first, last):
        _assert_completed_in_full(sessions, spy, run_id)


def test_a_run_that_fails_mid_slice_fails_alone_with_its_error_and_rows(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    first, failing, last = _submit(sessions, {"optimizer.lr": LRS})

    def boom() -> None:
        raise ValueError("boom at step 100")

    statuses = execute_slice([first, failing, last], sessions, progress=at_step(failing, 100, boom), **FAST)
    assert statuses == {first: "completed", failing: "failed", last: "completed"}
    run = _run(sessions, failing)
    assert run.error == "ValueError: boom at step 100"
    steps = _steps(sessions, failing)
    assert 90 <= len(steps) <= 101 and run.step >= 100  # the rows measured before the failure are kept
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    for run_id in (first, last):
        _assert_completed_in_full(sessions, spy, run_id)


def test_slice_mates_share_the_key_and_queue_within_the_bounds(sessions: sessionmaker[Session]) -> None:
    ids = _submit(sessions, {"optimizer.batch_size": [4, 8], "optimizer.lr": [0.5, 1.0, 2.0, 4.0]})
    by_batch: dict[int, list[int]] = {}
    for run_id in ids:
        by_batch.setdefault(int(_run(sessions, run_id).spec["optimizer"]["batch_size"]), []).append(run_id)
    lead, *mates = by_batch[4]
    assert slice_mates(sessions, lead, 64, 4.0) == mates  # the batch-size-8 runs have another key
    assert slice_mates(sessions, lead, 2, 4.0) == mates[:1]  # at most two runs in the slice
    assert slice_mates(sessions, lead, 1, 4.0) == []
    assert slice_mates(sessions, lead, 64, 1e-12) == []  # the memory bound: the run alone
    with sessions.begin() as session:
        queries.get_run(session=session, run_id=mates[0]).queue = "gpu"  # another queue's workers take it
        lifecycle.cancel(session=session, run=queries.get_run(session=session, run_id=mates[1]))
    assert slice_mates(sessions, lead, 64, 4.0) == mates[2:]
    assert plan_runs(sessions, ids, 64, 4.0) == [by_batch[4], by_batch[8]]


def test_a_run_task_takes_its_queued_mates_along_and_their_own_messages_find_nothing_to_do(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    ids = _submit(sessions, {"optimizer.batch_size": [4, 8], "optimizer.lr": LRS})
    four = [i for i in ids if _run(sessions, i).spec["optimizer"]["batch_size"] == 4]
    eight = [i for i in ids if i not in four]
    assert execute_task(four[0], sessions, slice_runs=2, **FAST) == "completed"
    assert spy.calls == [_cells(sessions, four[:2])]  # the run and one mate (slice_runs=2)
    assert [_run(sessions, i).status for i in ids] == ["completed" if i in four[:2] else "queued" for i in ids]
    assert _run(sessions, four[1]).worker == _run(sessions, four[0]).worker
    assert execute_task(four[1], sessions, **FAST) is None  # the mate's own message, delivered later
    assert execute_task(four[2], sessions, **FAST) == "completed"  # no queued mate left: alone
    assert execute_task(eight[1], sessions, **FAST) == "completed"  # its mates: the other batch size-8 runs
    assert spy.calls[1:] == [_cells(sessions, [four[2]]), _cells(sessions, [eight[1], eight[0], eight[2]])]
    for run_id in ids:
        _assert_completed_in_full(sessions, spy, run_id)


def test_a_dead_workers_slice_is_requeued_run_by_run_and_retrained_without_doubling(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    ids = _submit(sessions, {"optimizer.lr": LRS})
    with sessions.begin() as session:  # a worker claimed the three, wrote some rows, then died
        for run_id in ids:
            assert lifecycle.claim(session=session, run_id=run_id, worker="dead", stale_after=timedelta(0))
            queries.get_run(session=session, run_id=run_id).heartbeat_at = queries.now() - timedelta(hours=1)
    settings = WorkerSettings(database_url="unused", broker_url=BROKER_URL, stale_seconds=30)
    assert sorted(reap(sessions, settings)["requeued"]) == ids
    assert all(_run(sessions, i).status == "queued" for i in ids)
    # The first requeued message to arrive takes the others along; theirs then find nothing to do.
    assert execute_task(ids[1], sessions, **FAST) == "completed"
    assert spy.calls == [_cells(sessions, [ids[1], ids[0], ids[2]])]
    assert execute_task(ids[0], sessions, **FAST) is None and execute_task(ids[2], sessions, **FAST) is None
    for run_id in ids:
        run = _run(sessions, run_id)
        kinds = _kinds(sessions, run_id)
        assert run.status == "completed" and run.attempts == 2 and kinds.count("attempt") == 2
        assert kinds.count("requeue") == 1 and kinds.count("finish") == 1
        np.testing.assert_array_equal(_steps(sessions, run_id), np.arange(STEPS + 1))


def test_the_in_process_executor_trains_the_runs_submitted_together_as_slices(
    sessions: sessionmaker[Session], spy: Spy
) -> None:
    ids = _submit(sessions, {"optimizer.batch_size": [4, 8], "optimizer.lr": LRS[:2]})
    executor = InProcessExecutor(sessions, heartbeat_seconds=600.0, slice_runs=64)
    executor.submit(ids)
    executor.close()  # finishes what was submitted
    assert sorted(spy.calls) == sorted(_cells(sessions, [i for i in ids if _cell(sessions, i)[0] == b]) for b in (4, 8))
    assert all(_run(sessions, i).status == "completed" for i in ids) and executor.pending == []
    sequential = InProcessExecutor(sessions, slice_runs=1)
    assert sequential.plan(ids) == [[i] for i in ids]


@pytest.mark.slow  # a real `eos worker` process
def test_a_celery_worker_trains_a_sweep_as_one_slice_and_each_run_once(
    sessions: sessionmaker[Session], start_worker: Callable[[str], WorkerProcess]
) -> None:
    start_worker("cpu")
    ids = _submit(sessions, {"optimizer.lr": LRS})
    enqueue(ids, sessions, BROKER_URL)  # one message per run, as the API sends them
    wait_for(lambda: all(_run(sessions, i).status == "completed" for i in ids), 120, "the runs to complete")
    with sessions() as session:
        events = [e for i in ids for e in queries.list_events(session=session, run_id=i)]
    attempts = [e for e in events if e.kind == "attempt"]
    finishes = [e for e in events if e.kind == "finish"]
    assert len(attempts) == len(finishes) == 3 and len({e.details["worker"] for e in attempts}) == 1
    # All three were claimed by the first run's task before any finished: one slice, not three tasks in turn.
    assert max(e.created_at for e in attempts) < min(e.created_at for e in finishes)
    # The other two messages were delivered later, found nothing to claim and were acknowledged.
    broker = redis.Redis.from_url(BROKER_URL)
    wait_for(
        lambda: broker.llen(BROKER_PREFIX + "cpu") == 0 and not broker.hlen(BROKER_PREFIX + "unacked"),
        60,
        "the other messages to be consumed",
    )
    for run_id in ids:
        assert _run(sessions, run_id).attempts == 1 and _kinds(sessions, run_id).count("finish") == 1
        np.testing.assert_array_equal(_steps(sessions, run_id), np.arange(STEPS + 1))
