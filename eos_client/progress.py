"""Following runs until they finish: a progress bar per run on a terminal or in a notebook (rich), and
one line per change elsewhere (a pipe, a log file, CI), where bars would print nothing. Either way a run
that fails or diverges gets a line that says why (`Run.failure`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from .errors import WaitTimeout
from .models import Run

Fetch = Callable[[], Sequence[Run]]


LINE_STEPS = 10  # without a terminal, a running run's progress is printed at each tenth of its steps


def _describe(run: Run) -> str:
    return f"run {run.id} {run.label}" if run.params else f"run {run.id}"


class RunBars:
    """One bar per run: `run 3 lr=10  ━━━━━━  120/200  running  0:00:04`. A no-op when not shown.

    When `console` is not a terminal (nor a notebook), one line per change instead: a new status, each
    tenth of the steps done, and why a run failed: `run 3 lr=10: running 120/200`."""

    def __init__(self, show: bool = True, console: Console | None = None) -> None:
        self._progress: Progress | None = None
        self._console = console or get_console()
        self._lines = show and not (self._console.is_terminal or self._console.is_jupyter)
        self._seen: dict[int, tuple[str, int]] = {}  # run id -> (status, tenth of its steps) last printed
        if show and not self._lines:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self._progress = Progress(*columns, console=self._console, refresh_per_second=4)
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> RunBars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, runs: Sequence[Run]) -> None:
        if self._lines:
            self._print_changes(runs)
            return
        if self._progress is None:
            return
        for run in runs:
            if run.id not in self._tasks:
                self._tasks[run.id] = self._progress.add_task(_describe(run), total=run.steps or None, status="")
            done = run.steps if run.status == "completed" else run.step
            self._progress.update(self._tasks[run.id], completed=done, total=run.steps or None, status=run.status)
            self._print_failure(run, self._progress.console)

    def _print_failure(self, run: Run, console: Console) -> None:
        """Once per run, when it is seen failed or diverged: why (above the bars)."""
        if run.failure is not None and self._seen.get(run.id, ("", -1))[0] != run.status:
            console.print(f"{_describe(run)}: {run.failure}", markup=False, highlight=False)
        self._seen[run.id] = (run.status, -1)

    def _print_changes(self, runs: Sequence[Run]) -> None:
        for run in runs:
            done = run.steps if run.status == "completed" else run.step
            tenth = done * LINE_STEPS // run.steps if run.steps else 0
            if self._seen.get(run.id) == (run.status, tenth):
                continue
            self._seen[run.id] = (run.status, tenth)
            text = run.failure or f"{run.status} {done}/{run.steps or '?'}"
            self._console.print(f"{_describe(run)}: {text}", markup=False, highlight=False, soft_wrap=True)


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
