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
from store import queries
from store.traces import append_trace, delete_trace

log = logging.getLogger(__name__)
DERIVED_EVENTS = ("entrance", "exit", "return", "divergence")
Progress = Callable[[int, int], object]


@dataclass
class _StreamingSink:
    """Buffers the engine's chunks and writes them, with a heartbeat, in their own transactions.

    Every write is fenced by the attempt number: once the reaper has requeued the run or
    another worker has claimed it, the heartbeat raises LostOwnership and nothing is written.
    """

    run_id: int
    attempt: int
    steps: int
    sessions: sessionmaker[Session]
    flush_rows: int
    heartbeat_seconds: float
    buffered: list[Trace] = field(default_factory=list)
    rows: int = 0
    received: int = 0  # rows handed over by the engine, written or buffered
    last_write: float = field(default_factory=time.monotonic)
    last_step: int = 0

    def __call__(self, chunk: Trace) -> None:
        self.buffered.append(chunk)
        self.rows += len(chunk["step"])
        self.received += len(chunk["step"])
        self.last_step = int(chunk["step"][-1])
        if self.rows >= self.flush_rows or time.monotonic() - self.last_write >= self.heartbeat_seconds:
            self.flush()

    def progress(self, step: int, steps: int) -> None:
        self.last_step = max(self.last_step, step)
        if time.monotonic() - self.last_write >= self.heartbeat_seconds:
            self.flush()

    def flush(self, stop_on_cancel: bool = True) -> None:
        """Beat and write what is buffered; stop the run if a cancellation was requested."""
        with self.sessions.begin() as session:
            cancel = queries.heartbeat(
                session=session, run_id=self.run_id, attempt=self.attempt, step=self.last_step, steps=self.steps
            )
            if self.buffered:
                merged = {name: np.concatenate([c[name] for c in self.buffered]) for name in self.buffered[0]}
                append_trace(session=session, run_id=self.run_id, chunk=merged)
        self.buffered, self.rows, self.last_write = [], 0, time.monotonic()
        if cancel and stop_on_cancel:
            raise StopTraining


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
    progress: Progress | None = None,
) -> str | None:
    """Train run `run_id` and store everything; returns the final status, or None if skipped."""
    with sessions.begin() as session:
        run = queries.claim_run(session=session, run_id=run_id, worker=worker or worker_name(), stale_after=stale_after)
        if run is None:
            return None
        spec_data, steps, attempt = run.spec, run.steps, run.attempts
        # A retry restarts from a clean slate: same seed, same trace, exactly one row per step.
        delete_trace(session=session, run_id=run_id)
        queries.delete_events(session=session, run_id=run_id, kinds=DERIVED_EVENTS)
    sink = _StreamingSink(run_id, attempt, steps, sessions, flush_rows, heartbeat_seconds)

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
    except queries.LostOwnership:
        log.warning("run %s: attempt %s lost the run to another; stopping without writing", run_id, attempt)
        return None
    except Exception as exc:  # a failed run is a result to record, not a crash to retry
        log.exception("run %s failed", run_id)
        return _record_failure(sessions, run_id, attempt, sink, exc)
    status = "cancelled" if result.status == "stopped" else result.status
    try:
        with sessions.begin() as session:
            run = queries.owned_run(session=session, run_id=run_id, attempt=attempt)
            queries.finish_run(
                session=session,
                run=run,
                status=status,
                summary=result.summary.to_json(),
                dataset_info=_json_dict(result.dataset_info),
            )
            for kind, step, details in queries.summary_events(result.summary):
                queries.add_event(session=session, run_id=run_id, kind=kind, step=step, details=details)
    except queries.LostOwnership:
        return None
    return status


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
            run = queries.owned_run(session=session, run_id=run_id, attempt=attempt)
            queries.finish_run(session=session, run=run, status="failed", error=_describe(exc))
    except queries.LostOwnership:
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
