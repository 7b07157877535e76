"""The body of a run task, shared by the Celery worker and the embedded `eos run`.

It takes a run id, loads everything from the database, trains with a sink that streams
the trace into the store, records the events and the summary, and sets the final status.
It is idempotent: a finished run is left alone, and a retried run restarts from a clean
trace, so a redelivered message never doubles or loses a row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from eos_core import RunResult, RunSpec, StopTraining, train_slice
from eos_core.slices import DEFAULT_SLICE_MEMORY_GIB, DEFAULT_SLICE_RUNS, slice_key
from eos_core.trace import Trace
from store import lifecycle, queries
from store.db import database_unreachable
from store.errors import LostOwnership
from store.lifecycle import RunStatus
from store.traces import append_trace, delete_trace

from .outage import with_database
from .slicing import slice_mates

log = logging.getLogger(__name__)
DERIVED_EVENTS = ("entrance", "exit", "return", "divergence")
Progress = Callable[[int, int], object]  # (step, steps)
SliceProgress = Callable[[int, int, int], object]  # (run id, step, steps)


@dataclass
class _StreamingSink:
    """Buffers the engine's chunks and writes them, with a heartbeat, in their own transactions.

    Every write is fenced by the attempt number: once the reaper has requeued the run or
    another worker has claimed it, the heartbeat raises LostOwnership and nothing is written.
    A write that finds the database unreachable is retried (training waits) for up to
    `database_wait` seconds.
    """

    run_id: int
    attempt: int
    steps: int
    sessions: sessionmaker[Session]
    flush_rows: int
    heartbeat_seconds: float
    database_wait: float = 300.0
    buffered: list[Trace] = field(default_factory=list)
    rows: int = 0
    received: int = 0  # rows handed over by the engine, written or buffered
    last_write: float = field(default_factory=time.monotonic)
    last_step: int = 0
    pulse: _Pulse | None = None

    def __call__(self, chunk: Trace) -> None:
        self.buffered.append(chunk)
        self.rows += len(chunk["step"])
        self.received += len(chunk["step"])
        self.last_step = int(chunk["step"][-1])
        if self.rows >= self.flush_rows or self._due():
            self.flush()

    def progress(self, step: int, steps: int) -> None:
        self.last_step = max(self.last_step, step)
        if self._due():
            self.flush()

    def _due(self) -> bool:
        """Time for a write: the heartbeat is due, or the pulse saw a cancellation or a lost run."""
        flagged = self.pulse is not None and (self.pulse.cancel or self.pulse.lost)
        return flagged or time.monotonic() - self.last_write >= self.heartbeat_seconds

    def beat(self, session: Session) -> bool:
        return lifecycle.beat(
            session=session, run_id=self.run_id, attempt=self.attempt, step=self.last_step, steps=self.steps
        )

    def flush(self, stop_on_cancel: bool = True) -> None:
        """Beat and write what is buffered; stop the run if a cancellation was requested."""
        cancel = with_database(self._write, f"run {self.run_id}: writing the trace", self.database_wait)
        self.buffered, self.rows, self.last_write = [], 0, time.monotonic()
        if cancel and stop_on_cancel:
            raise StopTraining

    def _write(self) -> bool:
        with self.sessions.begin() as session:
            cancel = self.beat(session)
            if self.buffered:
                merged = {name: np.concatenate([c[name] for c in self.buffered]) for name in self.buffered[0]}
                append_trace(session=session, run_id=self.run_id, chunk=merged)
        return cancel


class _Pulse(threading.Thread):
    """Beats for the run every `every` seconds from a thread of its own, so the run's liveness
    does not depend on how long one training step takes (a measured step on a large model can
    outlast the stale time). What it learns (a cancellation, a lost run) the sink acts on at
    its next step; a beat that fails because the database is away is simply tried again."""

    def __init__(self, sink: _StreamingSink, every: float) -> None:
        super().__init__(name=f"eos-pulse-{sink.run_id}", daemon=True)
        self.sink, self.every = sink, every
        self.cancel = self.lost = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            if time.monotonic() - self.sink.last_write < self.every:
                continue  # the training thread beat recently
            try:
                with self.sink.sessions.begin() as session:
                    self.cancel = self.sink.beat(session) or self.cancel
            except LostOwnership:
                self.lost = True
                return
            except Exception as error:
                log.warning("run %s: heartbeat failed (%s)", self.sink.run_id, type(error).__name__)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_run(
    run_id: int,
    sessions: sessionmaker[Session],
    *,
    worker: str | None = None,
    stale_after: timedelta = timedelta(minutes=2),
    flush_rows: int = 4096,
    heartbeat_seconds: float = 5.0,
    database_wait: float = 300.0,
    progress: Progress | None = None,
) -> str | None:
    """Train run `run_id` and store everything; returns the final status, or None if skipped.

    A slice of one (execute_slice). The database being unreachable for longer than
    `database_wait` seconds raises (the run is not marked failed: it did not fail, and the
    reaper requeues it once it is back).
    """

    def report(_run_id: int, step: int, steps: int) -> None:
        assert progress is not None
        progress(step, steps)

    options = _Options(
        sessions, stale_after, flush_rows, heartbeat_seconds, database_wait, None if progress is None else report
    )
    claimed = _claim_run(options, run_id, worker or worker_name())
    return _train_claimed([claimed] if claimed else [], options).get(run_id)


def execute_slice(
    run_ids: Sequence[int],
    sessions: sessionmaker[Session],
    *,
    worker: str | None = None,
    stale_after: timedelta = timedelta(minutes=2),
    flush_rows: int = 4096,
    heartbeat_seconds: float = 5.0,
    database_wait: float = 300.0,
    progress: SliceProgress | None = None,
) -> dict[int, str | None]:
    """Train runs `run_ids` together (one eos_core.train_slice per slice key) and store each as its own.

    Each run is claimed in its own transaction; one that cannot be claimed (finished, cancelled,
    deleted, or running elsewhere with a fresh heartbeat) is skipped. Each claimed run gets its
    own sink and heartbeat thread, fenced by its own attempt number, and its own trace, events,
    summary and final status: a run cancelled, failed or lost to another attempt ends alone.
    Returns each run's final status (None: skipped, or lost to another attempt). `progress` gets
    (run id, step, steps).
    """
    options = _Options(sessions, stale_after, flush_rows, heartbeat_seconds, database_wait, progress)
    name = worker or worker_name()
    statuses: dict[int, str | None] = dict.fromkeys(run_ids)
    claimed = [c for c in (_claim_run(options, run_id, name) for run_id in statuses) if c is not None]
    statuses.update(_train_claimed(claimed, options))
    return statuses


def execute_task(
    run_id: int,
    sessions: sessionmaker[Session],
    *,
    slice_runs: int = DEFAULT_SLICE_RUNS,
    slice_memory_gib: float = DEFAULT_SLICE_MEMORY_GIB,
    worker: str | None = None,
    stale_after: timedelta = timedelta(minutes=2),
    flush_rows: int = 4096,
    heartbeat_seconds: float = 5.0,
    database_wait: float = 300.0,
) -> str | None:
    """The body of a run's Celery task: claim run `run_id`, take along the queued runs of its
    experiment that can share its slice (worker.slicing.slice_mates: at most `slice_runs` runs
    and `slice_memory_gib` in all), train them as one slice and store each as its own.

    Returns run `run_id`'s final status, or None if it could not be claimed (then nothing is:
    a redelivered message, or the message of a run another worker took into its slice). The
    runs taken along keep their own messages; delivered later, those find nothing to claim.
    """
    options = _Options(sessions, stale_after, flush_rows, heartbeat_seconds, database_wait)
    name = worker or worker_name()
    lead = _claim_run(options, run_id, name)
    if lead is None:
        return None
    claimed = [lead]
    try:
        mates = with_database(
            lambda: slice_mates(sessions, run_id, slice_runs, slice_memory_gib),
            f"run {run_id}: looking for runs to share its slice",
            database_wait,
        )
    except Exception as error:
        if database_unreachable(error):
            raise  # as for any write of the run: it stays running until the reaper requeues it
        log.exception("run %s: could not look for runs to share its slice; it trains alone", run_id)
        mates = []
    claimed += [c for c in (_claim_run(options, mate, name) for mate in mates) if c is not None]
    statuses = _train_claimed(claimed, options)
    for c in claimed[1:]:
        log.info("run %s: %s (trained in the slice of run %s)", c.run_id, statuses.get(c.run_id), run_id)
    return statuses.get(run_id)


@dataclass(frozen=True)
class _Options:
    """How this worker trains: its database, timings and the caller's progress callback."""

    sessions: sessionmaker[Session]
    stale_after: timedelta
    flush_rows: int
    heartbeat_seconds: float
    database_wait: float
    progress: SliceProgress | None = None


@dataclass
class _Claimed:
    """A run this worker holds: its attempt number fences every write (lifecycle.beat, lifecycle.owned)."""

    run_id: int
    spec: RunSpec | Exception  # a spec that no longer validates fails its run alone, with the reason
    steps: int
    attempt: int


def _claim_run(options: _Options, run_id: int, worker: str) -> _Claimed | None:
    return with_database(
        lambda: _claim(options.sessions, run_id, worker, options.stale_after),
        f"run {run_id}: claiming",
        options.database_wait,
    )


def _claim(sessions: sessionmaker[Session], run_id: int, worker: str, stale_after: timedelta) -> _Claimed | None:
    with sessions.begin() as session:
        run = lifecycle.claim(session=session, run_id=run_id, worker=worker, stale_after=stale_after)
        if run is None:
            return None
        # A retry restarts from a clean slate: same seed, same trace, exactly one row per step.
        delete_trace(session=session, run_id=run_id)
        queries.delete_events(session=session, run_id=run_id, kinds=DERIVED_EVENTS)
        return _Claimed(run_id, _parse(run.spec), run.steps, run.attempts)


def _train_claimed(claimed: Sequence[_Claimed], options: _Options) -> dict[int, str | None]:
    """Train runs this worker holds, a slice per slice key, and store each run's outcome.

    Every run's heartbeat thread starts at once (all are claimed first, so none goes stale
    while another slice of the call trains). A database outage that outlasts `database_wait`
    (a run's sink gave up, or storing a result did) raises once the other results are stored,
    or once storing one failed; the runs left unstored stay running until the reaper requeues
    them (their heartbeats stop), and a retry trains them from a clean trace.
    """
    if not claimed:
        return {}
    sinks = {
        c.run_id: _StreamingSink(
            c.run_id,
            c.attempt,
            c.steps,
            options.sessions,
            options.flush_rows,
            options.heartbeat_seconds,
            options.database_wait,
        )
        for c in claimed
    }
    for sink in sinks.values():
        sink.pulse = _Pulse(sink, options.heartbeat_seconds)
        sink.pulse.start()
    statuses: dict[int, str | None] = {}
    outage: Exception | None = None
    storing_failed = False  # once a result could not be stored, the others are not tried
    try:
        for group in _by_slice_key(claimed):
            if len(group) > 1:
                log.info("runs %s: training as one slice", ", ".join(str(c.run_id) for c in group))
            outcomes = _train_group(group, sinks, options.progress)
            for c in group:  # trained: their heartbeats are the sinks' writes from here on
                pulse = sinks[c.run_id].pulse
                assert pulse is not None
                pulse.stop()
            for c, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Exception) and database_unreachable(outcome):
                    outage = outage or outcome  # its sink waited out the outage: left running
                    continue
                if storing_failed:
                    continue  # the database is away: left running, for the reaper to requeue
                try:
                    statuses[c.run_id] = _store_outcome(sinks[c.run_id], outcome)
                except Exception as error:
                    if not database_unreachable(error):
                        raise
                    outage, storing_failed = outage or error, True
    finally:
        for sink in sinks.values():
            if sink.pulse is not None and sink.pulse.is_alive():
                sink.pulse.stop()
    if outage is not None:
        raise outage  # an outage, not a result: the runs stay running until the reaper requeues them
    return statuses


def _parse(data: dict[str, Any]) -> RunSpec | Exception:
    try:
        return RunSpec.model_validate(data)
    except Exception as error:
        return error


def _by_slice_key(claimed: Sequence[_Claimed]) -> list[list[_Claimed]]:
    """Runs grouped by slice key, in order of first appearance (a spec that does not validate: alone)."""
    groups: dict[str, list[_Claimed]] = {}
    for c in claimed:
        key = slice_key(c.spec) if isinstance(c.spec, RunSpec) else f"invalid:{c.run_id}"
        groups.setdefault(key, []).append(c)
    return list(groups.values())


def _train_group(
    group: Sequence[_Claimed], sinks: dict[int, _StreamingSink], progress: SliceProgress | None
) -> list[RunResult | Exception]:
    """One train_slice call for the runs of `group` (one slice key); a spec that does not validate
    is alone in its group, and its validation error is its outcome."""
    specs = [c.spec for c in group if isinstance(c.spec, RunSpec)]
    if len(specs) < len(group):  # an invalid spec is alone in its group (_by_slice_key)
        return [c.spec for c in group if isinstance(c.spec, Exception)]
    try:
        return train_slice(
            specs,
            sinks=[sinks[c.run_id] for c in group],
            progress=[_reporter(sinks[c.run_id], progress) for c in group],
        )
    except Exception as error:  # what ended the whole slice (its data would not load) ends each run
        return [error] * len(group)


def _reporter(sink: _StreamingSink, progress: SliceProgress | None) -> Progress:
    """The run's progress callback: its sink's heartbeat (and cancellation), then the caller's."""

    def on_progress(step: int, total: int) -> None:
        sink.progress(step, total)
        if progress is not None:
            progress(sink.run_id, step, total)

    return on_progress


def _store_outcome(sink: _StreamingSink, outcome: RunResult | Exception) -> str | None:
    """Store what training ended with, as one run's own: the rest of its trace, its summary and
    events, its final status (or its failure). None when another attempt owns the run."""
    run_id, attempt, sessions = sink.run_id, sink.attempt, sink.sessions
    try:
        if isinstance(outcome, Exception):
            raise outcome
        result = outcome
        # What training returned is the result, whatever was requested meanwhile: store it all,
        # with the rows a stopped run recorded after its last chunk.
        tail = {name: column[sink.received :] for name, column in result.trace.items()}
        if len(tail["step"]):
            sink.buffered.append(tail)
            sink.received += len(tail["step"])
        sink.last_step = int(result.trace["step"][-1]) if len(result.trace["step"]) else 0
        sink.flush(stop_on_cancel=False)
    except LostOwnership:
        log.warning("run %s: attempt %s lost the run to another; stopping without writing", run_id, attempt)
        return None
    except Exception as exc:
        if database_unreachable(exc):
            raise  # an outage, not a result: the run stays running until the reaper requeues it
        log.exception("run %s failed", run_id)  # a failed run is a result to record, not a crash to retry
        return _record_failure(sessions, run_id, attempt, sink, exc)
    status = RunStatus.CANCELLED if result.status == "stopped" else RunStatus(result.status)

    def finish() -> None:
        with sessions.begin() as session:
            run = lifecycle.owned(session=session, run_id=run_id, attempt=attempt)
            summary, info = result.summary.to_json(), _json_dict(result.dataset_info)
            lifecycle.finish(session=session, run=run, status=status, summary=summary, dataset_info=info)
            for kind, step, details in queries.summary_events(result.summary):
                queries.add_event(session=session, run_id=run_id, kind=kind, step=step, details=details)

    try:
        with_database(finish, f"run {run_id}: storing the result", sink.database_wait)
    except LostOwnership:
        return None
    return str(status)


def _record_failure(
    sessions: sessionmaker[Session], run_id: int, attempt: int, sink: _StreamingSink, exc: Exception
) -> str | None:
    """Keep the rows measured before the failure, then mark the run failed (if still ours)."""
    try:
        sink.flush(stop_on_cancel=False)
    except Exception:  # the database itself may be what failed: the status matters more
        log.exception("run %s: could not store the last rows", run_id)
    try:
        with sessions.begin() as session:
            run = lifecycle.owned(session=session, run_id=run_id, attempt=attempt)
            lifecycle.fail(session=session, run=run, error=_describe(exc))
    except LostOwnership:
        return None
    return "failed"


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[:4000]


def _json_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {str(k): _jsonable(v) for k, v in value.items()}


def _jsonable(value: object) -> object:
    """Summaries hold numpy scalars and non-finite floats: make them strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
