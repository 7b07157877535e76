"""The per-step trace: fixed columns, one row per recorded step, NaN where not measured."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

METRICS: tuple[str, ...] = (
    "loss",
    "acc",
    "batch_loss",
    "grad_norm",
    "batch_grad_norm",
    "drift",
    "drift_se",
    "drift_samples_used",
    "rel_drift",
    "stable",
    "stable_p",
    "quad_drift",
    "sharpness",
    "sharpness_residual",
    "hvps",
    "batch_sharpness",
    "eta_loss",
    "margin",
    "param_norm",
    "test_loss",
    "test_acc",
)
COLUMNS: tuple[str, ...] = ("step", *METRICS)

Trace = dict[str, np.ndarray]
Sink = Callable[[Trace], object]


class TraceRecorder:
    """Preallocated columns filled row by row; full chunks are handed to the sink as they close.

    The metrics live in one (metric, row) block whose rows `columns` views: a slice sets up one
    recorder per run, and one allocation and one copy per block cost a twentieth of one per column.
    """

    def __init__(self, capacity: int, chunk_rows: int, sink: Sink | None) -> None:
        # Start small and grow: a spec asking for 1e11 steps must not allocate them up front.
        self.capacity = capacity
        self._allocate(min(capacity, 65536))
        self.rows = 0
        self.flushed = 0
        self.chunk_rows = chunk_rows
        self.sink = sink

    def _allocate(self, size: int) -> None:
        self.metrics = np.full((len(METRICS), size), np.nan)
        self.steps = np.zeros(size, dtype=np.int64)
        self.columns: Trace = _columns(self.metrics, self.steps)

    def new_row(self, step: int) -> int:
        row = self.rows
        if row == len(self.steps):
            self._grow()
        self.steps[row] = step
        self.rows += 1
        return row

    def _grow(self) -> None:
        metrics, steps = self.metrics, self.steps
        self._allocate(len(steps) * 2)
        self.metrics[:, : len(steps)] = metrics
        self.steps[: len(steps)] = steps

    def set(self, row: int, **values: float) -> None:
        for name, value in values.items():
            self.columns[name][row] = value

    def flush(self, force: bool = False) -> None:
        """Send the closed rows (all but the last open one, unless forced) to the sink."""
        end = self.rows if force else self.rows - 1
        if self.sink is None or end <= self.flushed or (not force and end - self.flushed < self.chunk_rows):
            return
        chunk = self._copy(self.flushed, end)
        self.flushed = end
        self.sink(chunk)

    def result(self) -> Trace:
        return self._copy(0, self.rows)

    def _copy(self, start: int, end: int) -> Trace:
        """Rows [start, end) of every column, as a copy (one block copy, its rows viewed)."""
        return _columns(self.metrics[:, start:end].copy(), self.steps[start:end].copy())


def _columns(metrics: np.ndarray, steps: np.ndarray) -> Trace:
    """The trace's columns, in the recorder's order: the metric rows of the block, then the steps."""
    return {**dict(zip(METRICS, metrics, strict=True)), "step": steps}
