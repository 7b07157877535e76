"""Executors: how queued runs get trained. Chosen once, where the application is assembled.

- CeleryExecutor: one task per run to the broker; `eos worker` processes train them (the service).
- InProcessExecutor: trains in this process, as one worker would, the runs submitted together
  grouped into sweep slices (worker.slicing.plan_runs): in a background thread for the embedded
  API (`Client.local`), or in the caller's thread with a progress callback (`eos run`,
  `eos figures`).

Both hand the runs to the same body, worker.runner (execute_task for a Celery message,
execute_slice here), which moves each run along the lifecycle (store.lifecycle); the executors
only decide where that body runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
Progress = Callable[[int, int], object]  # (step, steps)
SliceProgress = Callable[[int, int, int], object]  # (run id, step, steps)


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
    """Trains runs in this process: those submitted together as slices, one slice at a time.

    `slice_runs` and `slice_memory_gib` bound a slice (default: EOS_SLICE_RUNS and
    EOS_SLICE_MEMORY_GIB, as a worker's); `slice_runs=1` trains one run at a time.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        heartbeat_seconds: float = 0.5,
        slice_runs: int | None = None,
        slice_memory_gib: float | None = None,
    ) -> None:
        from .settings import WorkerSettings

        if slice_runs is None or slice_memory_gib is None:
            settings = WorkerSettings()
            slice_runs = settings.slice_runs if slice_runs is None else slice_runs
            slice_memory_gib = settings.slice_memory_gib if slice_memory_gib is None else slice_memory_gib
        self._sessions = sessions
        self.heartbeat_seconds = heartbeat_seconds
        self.slice_runs, self.slice_memory_gib = slice_runs, slice_memory_gib
        self._queue: queue.Queue[list[int] | None] = queue.Queue()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def execute(self, run_id: int, progress: Progress | None = None) -> str | None:
        """Train one run now, in the caller's thread; returns its final status (None: nothing to do)."""
        from .runner import execute_run

        return execute_run(run_id, self._sessions, heartbeat_seconds=self.heartbeat_seconds, progress=progress)

    def plan(self, run_ids: Iterable[int]) -> list[list[int]]:
        """The runs grouped into slices (worker.slicing.plan_runs), each for one execute_slice."""
        from .slicing import plan_runs

        return plan_runs(self._sessions, list(run_ids), self.slice_runs, self.slice_memory_gib)

    def execute_slice(self, run_ids: Sequence[int], progress: SliceProgress | None = None) -> dict[int, str | None]:
        """Train the runs of one slice (as `plan` groups them) now, in the caller's thread; returns
        each run's final status (None: nothing to do). `progress` gets (run id, step, steps)."""
        from .runner import execute_slice

        return execute_slice(run_ids, self._sessions, heartbeat_seconds=self.heartbeat_seconds, progress=progress)

    def submit(self, run_ids: Iterable[int]) -> None:
        """Queue runs for the background thread (started on first use), to be trained as slices with
        the runs submitted along; a run already pending is not queued twice."""
        with self._lock:
            new = list(dict.fromkeys(i for i in run_ids if i not in self._pending))
            self._pending.update(new)
            if new and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="eos-local-runs", daemon=True)
                self._thread.start()
        if new:
            self._queue.put(new)

    __call__ = submit  # the API's enqueue

    @property
    def pending(self) -> list[int]:
        """Runs handed to the background thread and not finished yet."""
        with self._lock:
            return sorted(self._pending)

    def _work(self) -> None:
        while (run_ids := self._queue.get()) is not None:
            try:
                groups = self.plan(run_ids)
            except Exception:  # the store failing: the runs stay queued
                log.exception("local runs %s could not be planned", run_ids)
                groups = []
            planned = {i for group in groups for i in group}
            self._done([i for i in run_ids if i not in planned])  # gone meanwhile
            for group in groups:
                try:
                    self.execute_slice(group)
                except Exception:  # execute_slice records a failed run itself; this is the store failing
                    log.exception("local runs %s could not be executed", group)
                finally:
                    self._done(group)

    def _done(self, run_ids: Iterable[int]) -> None:
        with self._lock:
            self._pending.difference_update(run_ids)

    def close(self) -> None:
        """Finish what is queued (cancel it first to make that quick), then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
