"""Training runs in this process as sweep slices, with progress bars: `eos run` and `eos figures`.

The runs are grouped as a worker groups them (worker.executors.InProcessExecutor.plan) and each
slice is trained by one call (InProcessExecutor.execute_slice). A slice of up to BARS_PER_SLICE
runs shows a bar per run; a larger one, one bar of the slice's run-steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from worker.executors import InProcessExecutor

BARS_PER_SLICE = 16


def train_with_bars(
    executor: InProcessExecutor,
    run_ids: Sequence[int],
    labels: Mapping[int, str],
    console: Console,
    show: bool = True,
) -> tuple[dict[int, str | None], float]:
    """Train the runs of one slice now; returns each run's final status and the slice's wall time (s)."""
    started = time.perf_counter()
    if not show:
        return executor.execute_slice(run_ids), time.perf_counter() - started
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        if len(run_ids) <= BARS_PER_SLICE:
            tasks = {i: bar.add_task(escape(labels.get(i, f"run {i}")), total=None) for i in run_ids}

            def progress(run_id: int, step: int, steps: int) -> None:
                bar.update(tasks[run_id], completed=step, total=steps)

        else:
            first, last = run_ids[0], run_ids[-1]
            task = bar.add_task(f"runs {first}-{last}: {len(run_ids)} runs in one slice, run-steps", total=None)
            done = dict.fromkeys(run_ids, 0)

            def progress(run_id: int, step: int, steps: int) -> None:
                done[run_id] = step
                bar.update(task, completed=sum(done.values()), total=steps * len(run_ids))

        statuses = executor.execute_slice(run_ids, progress=progress)
    return statuses, time.perf_counter() - started


def slice_note(runs: int, seconds: float) -> str:
    """How long a run took: 'in 2.0 s' alone, 'in 2.0 s (a slice of 3 runs)' trained with others."""
    return f"in {seconds:.1f} s" + (f" (a slice of {runs} runs)" if runs > 1 else "")
