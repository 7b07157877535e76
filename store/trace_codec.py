"""The numeric half of the trace store, no database: chunks checked and cut into stored blocks,
per-group summaries, and bucketing for downsampled reads. store/traces.py explains the layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from eos_core.trace import COLUMNS, METRICS

Chunk = dict[str, np.ndarray]
Floats = NDArray[np.float64]
Steps = NDArray[np.int64]
Row = tuple[int, int, int, int, int, bytes]  # run_id, metric, first_step, last_step, n_rows, data

BLOCK_ROWS = 4096  # rows per stored block: 32 KiB per metric, ~250 blocks for a 1M-step run
GROUP_ROWS = 64  # rows per summary group: a summary costs 32 bytes per 64 values (+6%)
SUMMARY = 100  # metric id of a summary row = SUMMARY + id of the metric it summarizes
STEP = 0  # metric id of the step column
# The stored id of every trace column, frozen: rows on disk hold these numbers, so an id is
# never changed or reused, and a new metric takes the next free id (below SUMMARY), wherever
# it sits in eos_core.trace.COLUMNS. tests/store/test_metric_ids.py holds the table as shipped.
METRIC_IDS: Mapping[str, int] = MappingProxyType(
    {
        "step": 0, "loss": 1, "acc": 2, "batch_loss": 3, "grad_norm": 4, "batch_grad_norm": 5,
        "drift": 6, "drift_se": 7, "drift_samples_used": 8, "rel_drift": 9, "stable": 10,
        "stable_p": 11, "quad_drift": 12, "sharpness": 13, "sharpness_residual": 14, "hvps": 15,
        "batch_sharpness": 16, "eta_loss": 17, "margin": 18, "param_norm": 19, "test_loss": 20,
        "test_acc": 21,
    }
)  # fmt: skip
METRIC_NAMES: Mapping[int, str] = MappingProxyType({i: name for name, i in METRIC_IDS.items()})
# The ids of the engine's metrics (not `step`), in trace order.
ALL_METRIC_IDS: tuple[int, ...] = tuple(METRIC_IDS[name] for name in METRICS)
F8 = np.dtype("<f8")  # the stored format, whatever the machine's byte order
MAX_EXACT_STEP = 2**53  # float64 holds every integer below this


class UnknownMetric(ValueError):
    """A metric name that is not a trace column."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"unknown metric(s) {', '.join(names)}; valid: {', '.join(METRICS)}")


class BadChunk(ValueError):
    """A chunk without every column, with unequal lengths, or with steps not increasing."""


def metric_ids(metrics: Sequence[str] | None) -> list[int]:
    """Stored ids of the asked metrics (all when None) in trace order, `step` (always read) left out."""
    if metrics is None:
        return list(ALL_METRIC_IDS)
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [name for name in metrics if name not in METRIC_IDS]
    if unknown:
        raise UnknownMetric(unknown)
    return [METRIC_IDS[name] for name in METRICS if name in metrics]


def check_chunk(chunk: Chunk) -> Steps:
    """The chunk's steps as int64, after checking that the chunk is a well-formed piece of trace."""
    missing = [name for name in COLUMNS if name not in chunk]
    if missing:
        raise BadChunk(f"trace chunk lacks column(s) {', '.join(missing)}")
    extra = [name for name in chunk if name not in METRIC_IDS]
    if extra:
        raise UnknownMetric(extra)
    steps = np.asarray(chunk["step"])
    if steps.ndim != 1 or any(np.shape(chunk[name]) != steps.shape for name in METRICS):
        raise BadChunk("trace chunk columns must be 1-d and of equal length")
    if not np.issubdtype(steps.dtype, np.integer):
        raise BadChunk(f"trace chunk steps must be integers, got {steps.dtype}")
    steps = steps.astype(np.int64, copy=False)
    if len(steps) and (np.any(np.diff(steps) <= 0) or steps[0] < 0 or steps[-1] >= MAX_EXACT_STEP):
        raise BadChunk("trace chunk steps must be strictly increasing, in [0, 2**53)")
    return steps


def concat(chunks: Sequence[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in COLUMNS}


def encode(run_id: int, chunk: Chunk, steps: Steps, block_rows: int) -> list[Row]:
    """Table rows for a checked chunk, in blocks of at most block_rows.

    Per block: the step row and its summary (first step of each group); per metric that is
    not NaN throughout the block, its row and its summary. A missing row reads back as NaN.
    """
    rows: list[Row] = []
    for lo in range(0, len(steps), block_rows):
        hi = min(lo + block_rows, len(steps))
        key = (run_id, int(steps[lo]), int(steps[hi - 1]), hi - lo)
        block = steps[lo:hi].astype(F8)
        rows += [_row(key, STEP, block), _row(key, SUMMARY + STEP, block[::GROUP_ROWS])]
        for name, metric in zip(METRICS, ALL_METRIC_IDS, strict=True):
            values = np.asarray(chunk[name][lo:hi], dtype=F8)
            if not np.isnan(values).all():
                rows += [_row(key, metric, values), _row(key, SUMMARY + metric, summarize(values).ravel())]
    return rows


def _row(key: tuple[int, int, int, int], metric: int, values: Floats) -> Row:
    run_id, first, last, n = key
    return (run_id, metric, first, last, n, np.ascontiguousarray(values, dtype=F8).tobytes())


def summarize(values: Floats) -> Floats:
    """NaN-aware min, max, sum and count of each group of GROUP_ROWS rows; shape (4, groups)."""
    groups = -(-len(values) // GROUP_ROWS)
    padded = np.full(groups * GROUP_ROWS, np.nan)
    padded[: len(values)] = values
    grid = padded.reshape(groups, GROUP_ROWS)
    measured = ~np.isnan(grid)
    low, high = np.fmin.reduce(grid, axis=1), np.fmax.reduce(grid, axis=1)  # fmin/fmax skip NaN
    return np.stack([low, high, np.where(measured, grid, 0.0).sum(axis=1), measured.sum(axis=1).astype(F8)])


def stored_summary(blob: bytes) -> Floats:
    values = np.frombuffer(blob, dtype=F8)
    return values.reshape(4, len(values) // 4)


def unmeasured(groups: int) -> Floats:
    """The summary of groups without a value: min and max NaN, sum and count 0."""
    return np.concatenate([np.full((2, groups), np.nan), np.zeros((2, groups))])


def bucket_starts(steps: Steps, max_points: int) -> NDArray[np.intp]:
    """Index where each bucket starts: equal step intervals from steps[0], empty ones dropped."""
    width = -(-(int(steps[-1]) - int(steps[0]) + 1) // max_points)  # ceil: at most max_points buckets
    bucket = (steps - steps[0]) // width
    return np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))


def _mean(total: Floats, count: Floats) -> Floats:
    return np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)


def downsample(steps: Steps, columns: dict[str, Floats], max_points: int) -> dict[str, np.ndarray]:
    """Bucket full-resolution rows: first step, NaN-aware mean, min and max of each bucket."""
    starts = bucket_starts(steps, max_points)
    out: dict[str, np.ndarray] = {"step": steps[starts]}
    for name, values in columns.items():
        measured = ~np.isnan(values)
        count = np.add.reduceat(measured, starts, dtype=np.int64).astype(F8)
        out[name] = _mean(np.add.reduceat(np.where(measured, values, 0.0), starts), count)
        out[f"{name}_min"] = np.fmin.reduceat(values, starts)
        out[f"{name}_max"] = np.fmax.reduceat(values, starts)
    return out


def downsample_groups(firsts: Steps, stats: dict[str, Floats], max_points: int) -> dict[str, np.ndarray]:
    """Bucket whole groups (first step of each, and `summarize` stats per metric) into <= max_points."""
    starts = bucket_starts(firsts, max_points)
    out: dict[str, np.ndarray] = {"step": firsts[starts]}
    for name, (low, high, total, count) in stats.items():
        out[name] = _mean(np.add.reduceat(total, starts), np.add.reduceat(count, starts))
        out[f"{name}_min"] = np.fmin.reduceat(low, starts)
        out[f"{name}_max"] = np.fmax.reduceat(high, starts)
    return out
