"""Per-step traces: stored as column blocks, read back whole, by range, or downsampled.

Layout. Table `trace_chunks` (store/models.py) holds one row per (run, metric, block of
recorded steps): `data` is the metric over the block as a little-endian float64 array,
`first_step`/`last_step`/`n_rows` describe the block. Metric 0 is `step` itself, stored the
same way (float64 is exact for steps below 2**53). Every block has a step row; a metric
that is NaN over a whole block (test loss between evaluations, sharpness when disabled) has
no row at all and reads back as NaN. Blocks of one run never overlap and are written in
step order.

Why not a row per step (or per value):
- Ingest: the ORM manages ~20k rows/s, so a 1M-step run would take a minute of database
  time per run; one COPY of ~250 blocks x 22 metrics takes well under a second.
- Size: a row per step costs a 24-byte tuple header, an item pointer and a PK index entry
  per row before any value; MLflow's (key, value, timestamp, step) metric table costs about
  400 bytes per value. Blocks cost ~8 bytes per value plus a few bytes per 4096 (TOAST
  compresses the mostly-NaN columns to almost nothing).
- Reads: downsampling 1M rows with GROUP BY on the server takes seconds; here the server
  streams ~250 blobs per metric (binary protocol, no hex) and numpy buckets them in a few
  milliseconds. Only the blocks overlapping the asked range and the asked metrics are read.

Spikes survive downsampling: every bucket reports the NaN-aware min, max and mean of its
rows, so a one-step spike shows in `<name>_max` however coarse the buckets.

All functions take `session=` keyword-only and never commit: the caller owns the
transaction. They go to the DBAPI connection under the session (psycopg COPY and binary
results on PostgreSQL, executemany on SQLite) because the ORM is the bottleneck here.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from eos_core.trace import COLUMNS, METRICS

Chunk = dict[str, np.ndarray]
Floats = NDArray[np.float64]

BLOCK_ROWS = 4096  # rows per stored block: 32 KiB per metric, ~250 blocks for a 1M-step run
EXPORT_ROWS = 65_536  # rows per CSV piece / parquet row group: bounded memory while exporting
GROUP_ROWS = 64  # rows per summary group (see "Summaries" above)
SUMMARY = 100  # metric id of a summary row = SUMMARY + id of its metric
SUMMARY_MIN_GROUPS = 4  # read summaries when a bucket spans at least this many groups
STEP = 0
METRIC_IDS = {name: i for i, name in enumerate(COLUMNS)}
F8 = np.dtype("<f8")
MAX_EXACT_STEP = 2**53  # float64 holds every integer up to here


class UnknownMetric(ValueError):
    """A metric name that is not a trace column."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"unknown metric(s) {', '.join(names)}; valid: {', '.join(METRICS)}")


class TraceOverlap(ValueError):
    """A block whose steps are not after everything already stored for the run."""


class BadChunk(ValueError):
    """A chunk without every column, with unequal lengths, or with steps not increasing."""


# --- raw SQL on the session's own connection -------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.connection().dialect.name


def _driver(session: Session) -> Any:
    session.flush()  # the run row a caller just added must exist for the foreign key
    return session.connection().connection.driver_connection


def _query(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of `sql` (psycopg %(name)s style); binary results on PostgreSQL so bytea is not hex."""
    raw = _driver(session)
    if _dialect(session) == "postgresql":
        with raw.cursor(binary=True) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    cursor = raw.cursor()
    try:
        cursor.execute(re.sub(r"%\((\w+)\)s", r":\1", sql), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _execute(session: Session, sql: str, params: dict[str, Any]) -> int:
    """Run a statement; returns the affected row count."""
    raw = _driver(session)
    if _dialect(session) != "postgresql":
        sql = re.sub(r"%\((\w+)\)s", r":\1", sql)
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        return int(cursor.rowcount)
    finally:
        cursor.close()


Row = tuple[int, int, int, int, int, bytes]  # run_id, metric, first_step, last_step, n_rows, data
INSERT_COLUMNS = "run_id, metric, first_step, last_step, n_rows, data"


def _insert(session: Session, rows: list[Row]) -> None:
    raw = _driver(session)
    if _dialect(session) == "postgresql":
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY trace_chunks ({INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "int4", "int8", "int8", "int4", "bytea"])
            for row in rows:
                copy.write_row(row)
        return
    cursor = raw.cursor()
    try:
        cursor.executemany(f"INSERT INTO trace_chunks ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        cursor.close()


# --- writing ----------------------------------------------------------------------------------------


def _check_chunk(chunk: Chunk) -> NDArray[np.int64]:
    """The chunk's steps, after checking that it is a well-formed trace piece."""
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


def _encode(run_id: int, chunk: Chunk, steps: NDArray[np.int64], block_rows: int) -> list[Row]:
    """Rows for `trace_chunks`, in blocks of at most block_rows; all-NaN metric blocks are skipped."""
    rows: list[Row] = []
    for lo in range(0, len(steps), block_rows):
        hi = min(lo + block_rows, len(steps))
        key = (run_id, int(steps[lo]), int(steps[hi - 1]), hi - lo)
        block = steps[lo:hi].astype(F8)
        rows.append(_row(key, STEP, block))
        rows.append(_row(key, SUMMARY + STEP, block[::GROUP_ROWS]))  # first step of each group
        for metric, name in enumerate(METRICS, start=1):
            values = np.asarray(chunk[name][lo:hi], dtype=F8)
            if not np.isnan(values).all():
                rows.append(_row(key, metric, values))
                rows.append(_row(key, SUMMARY + metric, summarize(values).ravel()))
    return rows


def _row(key: tuple[int, int, int, int], metric: int, values: Floats) -> Row:
    run_id, first, last, n = key
    return (run_id, metric, first, last, n, np.ascontiguousarray(values, dtype=F8).tobytes())


def summarize(values: Floats) -> Floats:
    """Per group of GROUP_ROWS rows: NaN-aware min, max, sum and count of values; shape (4, groups)."""
    groups = -(-len(values) // GROUP_ROWS)
    padded = np.full(groups * GROUP_ROWS, np.nan)
    padded[: len(values)] = values
    grid = padded.reshape(groups, GROUP_ROWS)
    measured = ~np.isnan(grid)
    return np.stack(
        [
            np.fmin.reduce(grid, axis=1),
            np.fmax.reduce(grid, axis=1),
            np.where(measured, grid, 0.0).sum(axis=1),
            measured.sum(axis=1).astype(F8),
        ]
    )


def trace_last_step(*, session: Session, run_id: int) -> int | None:
    """The last stored step of the run (None when nothing is stored): where a resumed run continues."""
    return _last_steps(session, [run_id]).get(run_id)


def _last_steps(session: Session, run_ids: Iterable[int]) -> dict[int, int]:
    ids = sorted({int(r) for r in run_ids})
    if not ids:
        return {}
    sql = (
        "SELECT run_id, max(last_step) FROM trace_chunks "
        f"WHERE metric = 0 AND run_id IN ({', '.join(map(str, ids))}) GROUP BY run_id"
    )
    return {int(run): int(last) for run, last in _query(session, sql, {})}


def append_traces(*, session: Session, chunks: Sequence[tuple[int, Chunk]], block_rows: int = BLOCK_ROWS) -> int:
    """Store chunks of several runs in one round trip; returns the rows (steps) written.

    Each chunk's steps must come after the run's stored steps (and after the run's earlier
    chunks in this call): a resumed run calls `trace_last_step` or `delete_trace` first.
    """
    checked = [(int(run_id), chunk, _check_chunk(chunk)) for run_id, chunk in chunks]
    last = _last_steps(session, (run_id for run_id, _, steps in checked if len(steps)))
    rows: list[Row] = []
    written = 0
    for run_id, chunk, steps in checked:
        if not len(steps):
            continue
        if run_id in last and steps[0] <= last[run_id]:
            raise TraceOverlap(
                f"run {run_id}: chunk starts at step {steps[0]} but steps up to {last[run_id]} are stored; "
                "call delete_trace(from_step=...) to rewrite them"
            )
        last[run_id] = int(steps[-1])
        rows.extend(_encode(run_id, chunk, steps, block_rows))
        written += len(steps)
    if rows:
        _insert(session, rows)
    return written


def append_trace(*, session: Session, run_id: int, chunk: Chunk, block_rows: int = BLOCK_ROWS) -> int:
    """Store one chunk of a run's trace (split into blocks of block_rows); returns the rows written."""
    return append_traces(session=session, chunks=[(run_id, chunk)], block_rows=block_rows)


class TraceWriter:
    """Buffers the engine's small chunks (~256 rows) per run and stores blocks of `block_rows`.

    Fewer, larger blocks mean fewer rows, smaller indexes and faster reads. Rows still
    buffered are not in the database: call `flush()` (or leave the `with` block) before the
    caller commits a checkpoint it may resume from. One writer per run at a time.
    """

    def __init__(self, *, session: Session, block_rows: int = BLOCK_ROWS) -> None:
        assert block_rows > 0
        self.session = session
        self.block_rows = block_rows
        self._buffers: dict[int, list[Chunk]] = {}
        self._pending: dict[int, int] = {}
        self._last: dict[int, int] = {}  # last buffered step per run, to refuse disorder early
        self.rows_written = 0

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.flush()

    def sink(self, run_id: int) -> Callable[[Chunk], None]:
        """A callable for eos_core's TraceRecorder: `train(..., sink=writer.sink(run.id))`."""
        return lambda chunk: self.add(run_id, chunk)

    def pending(self, run_id: int) -> int:
        return self._pending.get(run_id, 0)

    def add(self, run_id: int, chunk: Chunk) -> None:
        self.extend([(run_id, chunk)])

    def extend(self, chunks: Iterable[tuple[int, Chunk]]) -> None:
        """Buffer chunks of one or many runs; full blocks of all of them go out in one write."""
        ready: list[int] = []
        for run_id, chunk in chunks:
            steps = _check_chunk(chunk)
            if not len(steps):
                continue
            if run_id in self._last and steps[0] <= self._last[run_id]:
                raise TraceOverlap(f"run {run_id}: chunk starts at step {steps[0]}, after {self._last[run_id]}")
            self._last[run_id] = int(steps[-1])
            self._buffers.setdefault(run_id, []).append(chunk)
            self._pending[run_id] = self._pending.get(run_id, 0) + len(steps)
            if self._pending[run_id] >= self.block_rows and run_id not in ready:
                ready.append(run_id)
        if ready:
            self._write(ready, whole_blocks_only=True)

    def flush(self) -> int:
        """Store everything buffered, partial blocks included; returns the rows written."""
        return self._write(list(self._buffers), whole_blocks_only=False)

    def _write(self, run_ids: list[int], whole_blocks_only: bool) -> int:
        out: list[tuple[int, Chunk]] = []
        for run_id in run_ids:
            merged = _concat(self._buffers.pop(run_id))
            n = len(merged["step"])
            cut = n - n % self.block_rows if whole_blocks_only else n
            if cut < n:
                self._buffers[run_id] = [{k: v[cut:] for k, v in merged.items()}]
            self._pending[run_id] = n - cut
            if cut:
                out.append((run_id, {k: v[:cut] for k, v in merged.items()}))
        written = append_traces(session=self.session, chunks=out, block_rows=self.block_rows) if out else 0
        self.rows_written += written
        return written


def _concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([c[name] for c in chunks]) for name in COLUMNS}


# --- deleting ---------------------------------------------------------------------------------------


def delete_trace(*, session: Session, run_id: int, from_step: int = 0) -> int:
    """Remove the run's stored steps >= from_step (all by default); returns how many steps went.

    A block straddling from_step is cut short in place, so a restarted run can append from
    from_step on and every step still has exactly one value.
    """
    params = {"run": run_id, "from": from_step}
    removed = _sum_rows(session, "run_id = %(run)s AND first_step >= %(from)s", params)
    straddling = _query(
        session,
        "SELECT first_step FROM trace_chunks WHERE run_id = %(run)s AND metric = 0 "
        "AND first_step < %(from)s AND last_step >= %(from)s",
        params,
    )
    for (first_step,) in straddling:
        removed += _truncate_block(session, run_id, int(first_step), from_step)
    _execute(session, "DELETE FROM trace_chunks WHERE run_id = %(run)s AND first_step >= %(from)s", params)
    return removed


def _sum_rows(session: Session, where: str, params: dict[str, Any]) -> int:
    rows = _query(session, f"SELECT coalesce(sum(n_rows), 0) FROM trace_chunks WHERE metric = 0 AND {where}", params)
    return int(rows[0][0])


def _truncate_block(session: Session, run_id: int, first_step: int, from_step: int) -> int:
    """Rewrite one block with only its steps < from_step (summaries recomputed); returns the steps dropped."""
    blocks = _fetch(session, run_id, list(range(1, len(COLUMNS))), first_step, first_step)
    keep = int(np.searchsorted(blocks.steps, from_step, side="left"))
    assert keep > 0, "a straddling block starts before from_step"
    steps = blocks.steps[:keep]
    chunk: Chunk = {"step": steps, **{name: values[:keep] for name, values in blocks.columns.items()}}
    params = {"run": run_id, "first": first_step}
    _execute(session, "DELETE FROM trace_chunks WHERE run_id = %(run)s AND first_step = %(first)s", params)
    _insert(session, _encode(run_id, chunk, steps, keep))
    return len(blocks.steps) - keep


# --- reading ----------------------------------------------------------------------------------------


def _metric_ids(metrics: Sequence[str] | None) -> list[int]:
    """Column ids of the asked metrics (all when None), `step` (always read) left out."""
    if metrics is None:
        return list(range(1, len(COLUMNS)))
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [name for name in metrics if name not in METRIC_IDS]
    if unknown:
        raise UnknownMetric(unknown)
    return sorted({METRIC_IDS[name] for name in metrics} - {STEP})


@dataclass
class _Blocks:
    """The stored blocks of a range, concatenated: steps plus the asked metric columns."""

    steps: NDArray[np.int64]
    columns: dict[str, Floats]


def _fetch(session: Session, run_id: int, ids: list[int], start: int | None, end: int | None) -> _Blocks:
    """Read the blocks overlapping [start, end] for the given metric ids (step included)."""
    # A block of consecutive steps (last - first + 1 == n_rows) needs no step data: arange suffices.
    sql = (
        "SELECT metric, first_step, last_step, n_rows, "
        "CASE WHEN metric = 0 AND last_step - first_step + 1 = n_rows THEN NULL ELSE data END "
        f"FROM trace_chunks WHERE run_id = %(run)s AND metric IN ({', '.join(map(str, [STEP, *ids]))}) "
        "AND first_step <= %(end)s AND last_step >= %(start)s ORDER BY metric, first_step"
    )
    params = {"run": run_id, "start": -1 if start is None else start, "end": MAX_EXACT_STEP if end is None else end}
    rows = _query(session, sql, params)
    offsets: dict[int, int] = {}
    total = 0
    pieces: list[NDArray[np.int64]] = []
    for metric, first, last, n, blob in rows:
        if metric != STEP:
            break
        offsets[first] = total
        total += n
        pieces.append(np.arange(first, last + 1) if blob is None else np.frombuffer(blob, dtype=F8).astype(np.int64))
    steps = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    columns = {COLUMNS[i]: np.full(total, np.nan) for i in ids}
    for metric, first, _last, n, blob in rows[len(pieces) :]:
        at = offsets[first]
        columns[COLUMNS[metric]][at : at + n] = np.frombuffer(blob, dtype=F8)
    return _Blocks(steps, columns)


def read_trace(
    *,
    session: Session,
    run_id: int,
    metrics: Sequence[str] | None = None,
    start: int | None = None,
    end: int | None = None,
    max_points: int | None = None,
) -> dict[str, np.ndarray]:
    """The run's trace over steps [start, end] (inclusive), for the given metrics (all when None).

    Full resolution: `step` (int64) and one float64 array per metric, NaN where not measured.
    With max_points and more rows than that, steps are cut into at most max_points equal
    step intervals; each non-empty one gives `step` (its first recorded step), `<name>` (NaN-aware
    mean), `<name>_min` and `<name>_max` (NaN-aware; NaN only if the bucket has no value).
    Over long ranges a bucket is made of whole summary groups (GROUP_ROWS rows), so bucket
    edges move by less than a group; min, max and mean stay exact for the rows of each bucket.
    """
    if max_points is not None and max_points < 1:
        raise ValueError("max_points must be at least 1")
    ids = _metric_ids(metrics)
    if (
        max_points is not None
        and _inner_rows(session, run_id, start, end) >= max_points * GROUP_ROWS * SUMMARY_MIN_GROUPS
    ):
        return _read_summarized(session, run_id, ids, _Range(start, end), max_points)
    blocks = _fetch(session, run_id, ids, start, end)
    lo = 0 if start is None else int(np.searchsorted(blocks.steps, start, side="left"))
    hi = len(blocks.steps) if end is None else int(np.searchsorted(blocks.steps, end, side="right"))
    steps = blocks.steps[lo:hi]
    columns = {name: values[lo:hi] for name, values in blocks.columns.items()}
    if max_points is None or len(steps) <= max_points:
        return {"step": steps, **columns}
    return downsample(steps, columns, max_points)


@dataclass(frozen=True)
class _Range:
    """Inclusive step range; None is open."""

    start: int | None
    end: int | None

    @property
    def params(self) -> dict[str, int]:
        return {
            "start": -1 if self.start is None else self.start,
            "end": MAX_EXACT_STEP if self.end is None else self.end,
        }


def _inner_rows(session: Session, run_id: int, start: int | None, end: int | None) -> int:
    """Rows in the blocks lying wholly inside [start, end]: those a summarized read takes from summaries."""
    where = "run_id = %(run)s AND first_step >= %(start)s AND last_step <= %(end)s"
    return _sum_rows(session, where, {"run": run_id, **_Range(start, end).params})


def _read_summarized(
    session: Session, run_id: int, ids: list[int], span: _Range, max_points: int
) -> dict[str, np.ndarray]:
    """Downsample from the per-group summaries of inner blocks and the raw rows of the (at most two) edge blocks."""
    metric_list = ", ".join(map(str, [STEP, *ids]))
    summary_list = ", ".join(str(SUMMARY + i) for i in [STEP, *ids])
    sql = (
        "SELECT first_step, metric, last_step, n_rows, "
        "CASE WHEN metric = 0 AND last_step - first_step + 1 = n_rows THEN NULL ELSE data END "
        "FROM trace_chunks WHERE run_id = %(run)s AND first_step <= %(end)s AND last_step >= %(start)s AND ("
        f"(first_step >= %(start)s AND last_step <= %(end)s AND metric IN ({summary_list})) OR "
        f"((first_step < %(start)s OR last_step > %(end)s) AND metric IN ({metric_list}))"
        ") ORDER BY first_step, metric"
    )
    rows = _query(session, sql, {"run": run_id, **span.params})
    firsts: list[NDArray[np.int64]] = []
    stats: dict[int, list[Floats]] = {i: [] for i in ids}
    for _, block in itertools.groupby(rows, key=lambda row: row[0]):
        blobs = {metric: (first, last, n, blob) for first, metric, last, n, blob in block}
        _block_groups(blobs, ids, span, firsts, stats)
    if not firsts:
        return {"step": np.zeros(0, dtype=np.int64), **{COLUMNS[i]: np.zeros(0) for i in ids}}
    return downsample_groups(np.concatenate(firsts), {COLUMNS[i]: np.hstack(stats[i]) for i in ids}, max_points)


def _block_groups(
    blobs: dict[int, tuple[int, int, int, bytes | None]],
    ids: list[int],
    span: _Range,
    firsts: list[NDArray[np.int64]],
    stats: dict[int, list[Floats]],
) -> None:
    """Append one block's groups (first steps, and (4, groups) stats per metric) to firsts and stats."""
    if SUMMARY + STEP in blobs:  # an inner block: its stored summaries
        group_firsts = np.frombuffer(_blob(blobs[SUMMARY + STEP]), dtype=F8).astype(np.int64)
        for i in ids:
            found = blobs.get(SUMMARY + i)
            stats[i].append(_unmeasured(len(group_firsts)) if found is None else _stats(_blob(found)))
        firsts.append(group_firsts)
        return
    first, last, n, step_blob = blobs[STEP]  # an edge block: summarize its rows inside the range
    steps = np.arange(first, last + 1) if step_blob is None else np.frombuffer(step_blob, dtype=F8).astype(np.int64)
    params = span.params
    inside = (steps >= params["start"]) & (steps <= params["end"])
    if not inside.any():
        return
    for i in ids:
        found = blobs.get(i)
        values = np.full(n, np.nan) if found is None else np.frombuffer(_blob(found), dtype=F8)
        stats[i].append(summarize(values[inside]))
    firsts.append(steps[inside][::GROUP_ROWS])


def _blob(row: tuple[int, int, int, bytes | None]) -> bytes:
    blob = row[3]
    assert blob is not None
    return blob


def _stats(blob: bytes) -> Floats:
    values = np.frombuffer(blob, dtype=F8)
    return values.reshape(4, len(values) // 4)


def _unmeasured(groups: int) -> Floats:
    """Stats of groups with no value: min and max NaN, sum and count 0."""
    return np.concatenate([np.full((2, groups), np.nan), np.zeros((2, groups))])


def bucket_starts(steps: NDArray[np.int64], max_points: int) -> NDArray[np.intp]:
    """Row index where each bucket starts; buckets are equal step intervals, empty ones dropped."""
    width = -(-(int(steps[-1]) - int(steps[0]) + 1) // max_points)  # ceil: at most max_points buckets
    bucket = (steps - steps[0]) // width
    return np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))


def downsample(steps: NDArray[np.int64], columns: dict[str, Floats], max_points: int) -> dict[str, np.ndarray]:
    """Bucket a full-resolution trace: first step, NaN-aware mean, min and max per bucket."""
    starts = bucket_starts(steps, max_points)
    out: dict[str, np.ndarray] = {"step": steps[starts]}
    for name, values in columns.items():
        measured = ~np.isnan(values)
        count = np.add.reduceat(measured, starts, dtype=np.int64)
        total = np.add.reduceat(np.where(measured, values, 0.0), starts)
        out[name] = np.divide(total, count, out=np.full(len(starts), np.nan), where=count > 0)
        out[f"{name}_min"] = np.fmin.reduceat(values, starts)  # fmin/fmax skip NaN
        out[f"{name}_max"] = np.fmax.reduceat(values, starts)
    return out


def downsample_groups(firsts: NDArray[np.int64], stats: dict[str, Floats], max_points: int) -> dict[str, np.ndarray]:
    """Bucket groups (first step; min, max, sum, count per metric as `summarize` gives) into <= max_points."""
    starts = bucket_starts(firsts, max_points)
    out: dict[str, np.ndarray] = {"step": firsts[starts]}
    for name, (low, high, total, count) in stats.items():
        count_b = np.add.reduceat(count, starts)
        out[name] = np.divide(
            np.add.reduceat(total, starts), count_b, out=np.full(len(starts), np.nan), where=count_b > 0
        )
        out[f"{name}_min"] = np.fmin.reduceat(low, starts)
        out[f"{name}_max"] = np.fmax.reduceat(high, starts)
    return out


def trace_row_count(*, session: Session, run_id: int) -> int:
    """Stored steps of the run."""
    return _sum_rows(session, "run_id = %(run)s", {"run": run_id})


def trace_steps(*, session: Session, run_id: int) -> NDArray[np.int64]:
    """Every stored step of the run, in order."""
    return _fetch(session, run_id, [], None, None).steps


# --- export -----------------------------------------------------------------------------------------


def _block_spans(session: Session, run_id: int) -> list[tuple[int, int, int]]:
    rows = _query(
        session,
        "SELECT first_step, last_step, n_rows FROM trace_chunks "
        "WHERE run_id = %(run)s AND metric = 0 ORDER BY first_step",
        {"run": run_id},
    )
    return [(int(a), int(b), int(n)) for a, b, n in rows]


def iter_trace_pieces(
    *, session: Session, run_id: int, metrics: Sequence[str] | None = None, chunk_rows: int = EXPORT_ROWS
) -> Iterator[dict[str, np.ndarray]]:
    """The full-resolution trace in step order, in pieces of about chunk_rows rows (whole blocks).

    Keyset pagination over the block index rather than a server-side cursor: each piece is
    a short query of its own, so memory stays bounded and SQLite behaves the same.
    """
    _metric_ids(metrics)  # fail before the first piece on a bad name
    spans = _block_spans(session, run_id)
    i = 0
    while i < len(spans):
        j, rows = i, 0
        while j < len(spans) and (rows < chunk_rows or j == i):
            rows += spans[j][2]
            j += 1
        yield read_trace(session=session, run_id=run_id, metrics=metrics, start=spans[i][0], end=spans[j - 1][1])
        i = j


def _arrow_schema(metrics: Sequence[str] | None) -> pa.Schema:
    names = [COLUMNS[i] for i in _metric_ids(metrics)]
    return pa.schema([("step", pa.int64()), *((name, pa.float64()) for name in names)])


def _arrow_table(piece: dict[str, np.ndarray], schema: pa.Schema, nan_as_null: bool) -> pa.Table:
    arrays = [pa.array(piece["step"], type=pa.int64())]
    for name in schema.names[1:]:
        values = piece[name]
        arrays.append(pa.array(values, mask=np.isnan(values)) if nan_as_null else pa.array(values))
    return pa.Table.from_arrays(arrays, schema=schema)


def iter_trace_csv(
    *, session: Session, run_id: int, metrics: Sequence[str] | None = None, chunk_rows: int = EXPORT_ROWS
) -> Iterator[str]:
    """CSV text pieces (header first): `step` then the metrics; an empty field is NaN.

    Floats are written in the shortest form that round-trips (read back with
    pandas.read_csv(..., float_precision="round_trip") for bit-exact values).
    """
    schema = _arrow_schema(metrics)
    yield ",".join(schema.names) + "\n"
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    for piece in iter_trace_pieces(session=session, run_id=run_id, metrics=metrics, chunk_rows=chunk_rows):
        buffer = io.BytesIO()
        pa_csv.write_csv(_arrow_table(piece, schema, nan_as_null=True), buffer, write_options=options)
        yield buffer.getvalue().decode()


def write_trace_parquet(
    *,
    session: Session,
    run_id: int,
    metrics: Sequence[str] | None,
    sink: str | IO[bytes],
    chunk_rows: int = EXPORT_ROWS,
) -> int:
    """Stream the trace into a parquet file, one row group per piece; NaN stays NaN. Returns rows."""
    schema = _arrow_schema(metrics)
    rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for piece in iter_trace_pieces(session=session, run_id=run_id, metrics=metrics, chunk_rows=chunk_rows):
            writer.write_table(_arrow_table(piece, schema, nan_as_null=False))
            rows += len(piece["step"])
    return rows
