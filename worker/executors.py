"""Executors: how queued runs get trained. Chosen once, where the application is assembled.

- CeleryExecutor: one task per run to the broker; `eos worker` processes train them (the service).
- InProcessExecutor: trains in this process, one run at a time, as one worker would: in a
  background thread for the embedded API (`Client.local`), or in the caller's thread with a
  progress callback (`eos run`, `eos figures`).

Both hand the run to the same task body, worker.runner.execute_run, which moves it along the
lifecycle (store.lifecycle); the executors only decide where that body runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
Progress = Callable[[int, int], object]


class Executor(Protocol):
    def submit(self, run_ids: Iterable[int]) -> None:
        """Hand queued runs over for training; returns at once."""

    def close(self) -> None:
        """Stop taking runs (what is in flight is finished or left to the reaper)."""


class CeleryExecutor:
    """Send runs to Celery; a failed send leaves them queued, and the reaper sends them again."""

    def __init__(self, sessions: sessionmaker[Session], broker_url: str) -> None:
        self.sessions, self.broker_url = sessions, broker_url

    def submit(self, run_ids: Iterable[int]) -> None:
        from .dispatch import enqueue  # Celery is imported only by a process that sends

        ids = list(run_ids)
        if not ids:
            return
        try:
            enqueue(ids, self.sessions, self.broker_url)
        except Exception:
            log.exception("could not send runs %s to the broker; they stay queued for the reaper", ids)

    def close(self) -> None:
        return None


class InProcessExecutor:
    """Trains runs in this process, one at a time."""

    def __init__(self, sessions: sessionmaker[Session], *, heartbeat_seconds: float = 0.5) -> None:
        self._sessions = sessions
        self.heartbeat_seconds = heartbeat_seconds
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def execute(self, run_id: int, progress: Progress | None = None) -> str | None:
        """Train one run now, in the caller's thread; returns its final status (None: nothing to do)."""
        from .runner import execute_run

        return execute_run(run_id, self._sessions, heartbeat_seconds=self.heartbeat_seconds, progress=progress)

    def submit(self, run_ids: Iterable[int]) -> None:
        """Queue runs for the background thread (started on first use); a run already pending is not queued twice."""
        with self._lock:
            new = [i for i in run_ids if i not in self._pending]
            self._pending.update(new)
            if new and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="eos-local-runs", daemon=True)
                self._thread.start()
        for run_id in new:
            self._queue.put(run_id)

    __call__ = submit  # the API's enqueue

    @property
    def pending(self) -> list[int]:
        """Runs handed to the background thread and not finished yet."""
        with self._lock:
            return sorted(self._pending)

    def _work(self) -> None:
        while (run_id := self._queue.get()) is not None:
            try:
                self.execute(run_id)
            except Exception:  # execute_run records a failed run itself; this is the store failing
                log.exception("local run %s could not be executed", run_id)
            finally:
                with self._lock:
                    self._pending.discard(run_id)

    def close(self) -> None:
        """Finish what is queued (cancel it first to make that quick), then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
