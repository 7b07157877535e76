"""Several runs' traces on one step grid, for side-by-side comparison.

`store.traces.read_trace` buckets each run from its own first step, so two runs with
different lengths get different buckets. Here the grid is shared: `n` buckets of `width`
steps from `first`; each run's value in a bucket is the NaN-aware mean of its rows there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Grid:
    first: int  # step at which bucket 0 starts
    width: int  # steps per bucket
    n: int  # buckets

    @property
    def steps(self) -> NDArray[np.int64]:
        return self.first + self.width * np.arange(self.n, dtype=np.int64)


def common_grid(step_arrays: Iterable[NDArray[np.int64]], max_points: int) -> Grid:
    """At most max_points buckets of equal width covering every run's steps."""
    spans = [(int(s[0]), int(s[-1])) for s in step_arrays if len(s)]
    if not spans:
        return Grid(0, 1, 0)
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    width = -(-(last - first + 1) // max_points)  # ceil
    return Grid(first, width, (last - first) // width + 1)


def on_grid(steps: NDArray[np.int64], values: Floats, grid: Grid) -> Floats:
    """Mean of the measured values in each grid bucket; NaN where the run has none."""
    assert steps.shape == values.shape
    bucket = (steps - grid.first) // grid.width
    measured = ~np.isnan(values)
    count = np.bincount(bucket[measured], minlength=grid.n)
    total = np.bincount(bucket[measured], weights=values[measured], minlength=grid.n)
    return np.divide(total, count, out=np.full(grid.n, np.nan), where=count > 0)
