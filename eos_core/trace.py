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
    """Preallocated columns filled row by row; full chunks are handed to the sink as they close."""

    def __init__(self, capacity: int, chunk_rows: int, sink: Sink | None) -> None:
        # Start small and grow: a spec asking for 1e11 steps must not allocate them up front.
        self.capacity = capacity
        self.columns: Trace = {name: np.full(min(capacity, 65536), np.nan) for name in METRICS}
        self.columns["step"] = np.zeros(min(capacity, 65536), dtype=np.int64)
        self.rows = 0
        self.flushed = 0
        self.chunk_rows = chunk_rows
        self.sink = sink

    def new_row(self, step: int) -> int:
        row = self.rows
        if row == len(self.columns["step"]):
            self._grow()
        self.columns["step"][row] = step
        self.rows += 1
        return row

    def _grow(self) -> None:
        size = len(self.columns["step"]) * 2
        for name, column in self.columns.items():
            grown = np.zeros(size, dtype=column.dtype) if name == "step" else np.full(size, np.nan)
            grown[: len(column)] = column
            self.columns[name] = grown

    def set(self, row: int, **values: float) -> None:
        for name, value in values.items():
            self.columns[name][row] = value

    def flush(self, force: bool = False) -> None:
        """Send the closed rows (all but the last open one, unless forced) to the sink."""
        end = self.rows if force else self.rows - 1
        if self.sink is None or end <= self.flushed or (not force and end - self.flushed < self.chunk_rows):
            return
        chunk = {name: column[self.flushed : end].copy() for name, column in self.columns.items()}
        self.flushed = end
        self.sink(chunk)

    def result(self) -> Trace:
        return {name: column[: self.rows].copy() for name, column in self.columns.items()}
