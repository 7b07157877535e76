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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from eos_core import RunSpec, StopTraining, train
from eos_core.trace import Trace
from store import lifecycle, queries
from store.db import database_unreachable
from store.errors import LostOwnership
from store.lifecycle import RunStatus
from store.traces import append_trace, delete_trace

from .outage import with_database

log = logging.getLogger(__name__)
DERIVED_EVENTS = ("entrance", "exit", "return", "divergence")
Progress = Callable[[int, int], object]


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

    The database being unreachable for longer than `database_wait` seconds raises (the run is
    not marked failed: it did not fail, and the reaper requeues it once it is back).
    """
    name = worker or worker_name()
    claimed = with_database(
        lambda: _claim(sessions, run_id, name, stale_after), f"run {run_id}: claiming", database_wait
    )
    if claimed is None:
        return None
    spec_data, steps, attempt = claimed
    sink = _StreamingSink(run_id, attempt, steps, sessions, flush_rows, heartbeat_seconds, database_wait)
    sink.pulse = _Pulse(sink, heartbeat_seconds)
    sink.pulse.start()
    try:
        return _train_and_store(sink, spec_data, progress)
    finally:
        sink.pulse.stop()


def _claim(
    sessions: sessionmaker[Session], run_id: int, worker: str, stale_after: timedelta
) -> tuple[dict[str, Any], int, int] | None:
    with sessions.begin() as session:
        run = lifecycle.claim(session=session, run_id=run_id, worker=worker, stale_after=stale_after)
        if run is None:
            return None
        # A retry restarts from a clean slate: same seed, same trace, exactly one row per step.
        delete_trace(session=session, run_id=run_id)
        queries.delete_events(session=session, run_id=run_id, kinds=DERIVED_EVENTS)
        return run.spec, run.steps, run.attempts


def _train_and_store(sink: _StreamingSink, spec_data: dict[str, Any], progress: Progress | None) -> str | None:
    run_id, attempt, sessions = sink.run_id, sink.attempt, sink.sessions

    def on_progress(step: int, total: int) -> None:
        sink.progress(step, total)
        if progress is not None:
            progress(step, total)

    try:
        result = train(RunSpec.model_validate(spec_data), sink=sink, progress=on_progress)
        # What train returned is the result, whatever was requested meanwhile: store it all,
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
