"""Following runs until they finish, with a progress bar per run (rich: a terminal or a notebook)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from .errors import WaitTimeout
from .models import Run

Fetch = Callable[[], Sequence[Run]]


class RunBars:
    """One bar per run: `run 3 lr=10  ━━━━━━  120/200  running  0:00:04`. A no-op when not shown."""

    def __init__(self, show: bool = True, console: Console | None = None) -> None:
        self._progress: Progress | None = None
        if show:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self._progress = Progress(*columns, console=console, refresh_per_second=4)
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> RunBars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, runs: Sequence[Run]) -> None:
        if self._progress is None:
            return
        for run in runs:
            if run.id not in self._tasks:
                description = f"run {run.id} {run.label}" if run.params else f"run {run.id}"
                self._tasks[run.id] = self._progress.add_task(description, total=run.steps or None, status="")
            done = run.steps if run.status == "completed" else run.step
            self._progress.update(self._tasks[run.id], completed=done, total=run.steps or None, status=run.status)


def follow(
    fetch: Fetch,
    *,
    show: bool = True,
    poll: float = 1.0,
    timeout: float | None = None,
    console: Console | None = None,
) -> list[Run]:
    """Call `fetch` every `poll` seconds until every run it returns is finished; returns their final state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with RunBars(show, console) as bars:
        while True:
            runs = list(fetch())
            bars.update(runs)
            if all(r.finished for r in runs):
                return runs
            if deadline is not None and time.monotonic() >= deadline:
                waiting = [r.id for r in runs if not r.finished]
                raise WaitTimeout(f"runs {waiting} still unfinished after {timeout} s")
            time.sleep(poll)
