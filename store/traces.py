"""Per-step traces: stored as column blocks, read back whole, by range, or downsampled.

Layout. Table `trace_chunks` (store/models.py) holds one row per (run, metric, block of
recorded steps): `data` is the metric over the block as a little-endian float64 array,
`first_step`/`last_step`/`n_rows` describe the block. Metric 0 is `step` itself, stored the
same way (float64 is exact for steps below 2**53). Every block has a step row; a metric
that is NaN over a whole block (test loss between evaluations, a disabled instrument) has
no row and reads back as NaN. Blocks of a run never overlap and hold up to 4096 rows; a
write that finds the run's last block short merges into it, so a worker that flushes on a
timer still leaves full blocks.

Summaries. Next to each metric row, metric id 100 + m holds the NaN-aware min, max, sum and
count of every group of 64 rows of that block (step: the first step of each group), 6% more
bytes. A downsampled read over a long range takes whole groups from the summaries and only
the (at most two) blocks cut by the range edges from the rows: 16x fewer bytes to move.

Why not a row per step (or per value):
- Ingest: the ORM manages ~4-20k rows/s (bench/store.py), a minute or more per 1M-step run;
  here one COPY of ~250 blocks x 22 metrics takes a second or two.
- Size: a row per step pays a 24-byte tuple header, an item pointer and an index entry
  before any value, and MLflow's (key, value, timestamp, step) metric table costs about 400
  bytes per value; blocks cost ~5 bytes per value with indexes, TOAST and summaries (TOAST
  compresses the mostly-NaN columns).
- Reads: a GROUP BY over 1M rows to downsample takes seconds on the server; here a 1M-step
  read to 2,000 points moves ~0.6 MB per metric and takes a few milliseconds (bench/store.py).

Spikes survive downsampling: every bucket reports the NaN-aware min, max and mean of its
rows, so a one-step spike shows in `<name>_max` however coarse the buckets.

All functions take `session=` keyword-only and never commit: the caller owns the
transaction. They use the DBAPI connection under the session (psycopg COPY and binary
results on PostgreSQL, executemany on SQLite): the ORM would be the bottleneck. One writer
per run at a time (a worker owns its run); the primary key catches two writers that race.
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
from sqlalchemy.orm import Session

from .trace_codec import (
    ALL_METRIC_IDS,
    BLOCK_ROWS,
    F8,
    GROUP_ROWS,
    MAX_EXACT_STEP,
    METRIC_NAMES,
    STEP,
    SUMMARY,
    BadChunk,
    Chunk,
    Floats,
    Row,
    Steps,
    UnknownMetric,
    check_chunk,
    concat,
    downsample,
    downsample_groups,
    encode,
    metric_ids,
    stored_summary,
    summarize,
    unmeasured,
)

__all__ = [
    "BLOCK_ROWS",
    "GROUP_ROWS",
    "SUMMARY_MIN_GROUPS",
    "BadChunk",
    "TraceOverlap",
    "TraceWriter",
    "UnknownMetric",
    "append_trace",
    "append_traces",
    "delete_trace",
    "iter_trace_csv",
    "iter_trace_pieces",
    "read_trace",
    "trace_last_step",
    "trace_row_count",
    "trace_steps",
    "write_trace_parquet",
]

EXPORT_ROWS = 65_536  # rows per CSV piece / parquet row group: bounded memory while exporting
SUMMARY_MIN_GROUPS = 4  # read summaries when buckets span at least this many groups


class TraceOverlap(ValueError):
    """A chunk whose steps are not after everything already stored for the run."""


# --- SQL on the session's own DBAPI connection ------------------------------------------------------


def _is_postgres(session: Session) -> bool:
    return session.connection().dialect.name == "postgresql"


def _driver(session: Session) -> Any:
    session.flush()  # a run the caller just added must exist for the foreign key
    return session.connection().connection.driver_connection


def _sql(session: Session, sql: str) -> str:
    """Statements are written in psycopg's %(name)s style; sqlite3 wants :name."""
    return sql if _is_postgres(session) else re.sub(r"%\((\w+)\)s", r":\1", sql)


def _query(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    raw = _driver(session)
    # binary=True: bytea comes as raw bytes, not hex text twice the size to parse.
    cursor = raw.cursor(binary=True) if _is_postgres(session) else raw.cursor()
    try:
        cursor.execute(_sql(session, sql), params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _execute(session: Session, sql: str, params: dict[str, Any]) -> None:
    cursor = _driver(session).cursor()
    try:
        cursor.execute(_sql(session, sql), params)
    finally:
        cursor.close()


def _insert(session: Session, rows: list[Row]) -> None:
    columns = "run_id, metric, first_step, last_step, n_rows, data"
    raw = _driver(session)
    if _is_postgres(session):
        with raw.cursor() as cursor, cursor.copy(f"COPY trace_chunks ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int4", "int8", "int8", "int4", "bytea"])
            for row in rows:
                copy.write_row(row)
        return
    cursor = raw.cursor()
    try:
        cursor.executemany(f"INSERT INTO trace_chunks ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        cursor.close()


def _sum_rows(session: Session, where: str, params: dict[str, Any]) -> int:
    rows = _query(session, f"SELECT coalesce(sum(n_rows), 0) FROM trace_chunks WHERE metric = 0 AND {where}", params)
    return int(rows[0][0])


# --- writing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    first_step: int
    last_step: int
    n_rows: int


def _last_blocks(session: Session, run_ids: Iterable[int]) -> dict[int, _Block]:
    """The last stored block of each run that has one."""
    ids = sorted({int(r) for r in run_ids})
    if not ids:
        return {}
    sql = (
        "SELECT run_id, first_step, last_step, n_rows FROM trace_chunks AS c "
        f"WHERE metric = 0 AND run_id IN ({', '.join(map(str, ids))}) AND first_step = "
        "(SELECT max(first_step) FROM trace_chunks AS m WHERE m.run_id = c.run_id AND m.metric = 0)"
    )
    return {int(run): _Block(int(a), int(b), int(n)) for run, a, b, n in _query(session, sql, {})}


def trace_last_step(*, session: Session, run_id: int) -> int | None:
    """The last stored step of the run (None when nothing is stored): where a resumed run continues."""
    block = _last_blocks(session, [run_id]).get(run_id)
    return None if block is None else block.last_step


def append_traces(
    *, session: Session, chunks: Sequence[tuple[int, Chunk]], block_rows: int = BLOCK_ROWS, merge: bool = True
) -> int:
    """Store chunks of one or more runs in one round trip; returns the rows (steps) written.

    Each chunk's steps must come after the run's stored steps and its earlier chunks here: a
    restarted run calls `delete_trace` (or `trace_last_step`) first. With merge, a run whose
    last stored block is short has it rewritten together with the new rows.
    """
    per_run: dict[int, list[Chunk]] = {}
    for run_id, chunk in chunks:
        if len(check_chunk(chunk)):
            per_run.setdefault(int(run_id), []).append(chunk)
    tails = _last_blocks(session, per_run)
    rows: list[Row] = []
    written = 0
    for run_id, run_chunks in per_run.items():
        _check_order(run_id, run_chunks, tails.get(run_id))
        written += sum(len(chunk["step"]) for chunk in run_chunks)
        tail = tails.get(run_id)
        if merge and tail is not None and tail.n_rows < block_rows:
            run_chunks.insert(0, _take_block(session, run_id, tail.first_step))
        merged = concat(run_chunks)
        rows += encode(run_id, merged, np.asarray(merged["step"], dtype=np.int64), block_rows)
    if rows:
        _insert(session, rows)
    return written


def _check_order(run_id: int, chunks: list[Chunk], tail: _Block | None) -> None:
    last = -1 if tail is None else tail.last_step
    for chunk in chunks:
        first = int(chunk["step"][0])
        if first <= last:
            raise TraceOverlap(
                f"run {run_id}: a chunk starts at step {first} but steps up to {last} are stored or come "
                "before it; call delete_trace(from_step=...) before rewriting steps"
            )
        last = int(chunk["step"][-1])


def append_trace(*, session: Session, run_id: int, chunk: Chunk, block_rows: int = BLOCK_ROWS) -> int:
    """Store one chunk of a run's trace; returns the rows written."""
    return append_traces(session=session, chunks=[(run_id, chunk)], block_rows=block_rows)


class TraceWriter:
    """Buffers the engine's small chunks (~256 rows) per run; stores whole blocks of `block_rows`.

    Rows still buffered are not in the database: `flush()` (or leaving the `with` block)
    before the caller commits a point it may resume from. A vectorized worker passes the
    chunks of all its runs to `extend`, which writes every run's full blocks in one COPY.
    """

    def __init__(self, *, session: Session, block_rows: int = BLOCK_ROWS) -> None:
        assert block_rows > 0
        self.session = session
        self.block_rows = block_rows
        self._buffers: dict[int, list[Chunk]] = {}
        self._pending: dict[int, int] = {}
        self.rows_written = 0

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.flush()

    def sink(self, run_id: int) -> Callable[[Chunk], None]:
        """A sink for eos_core's TraceRecorder: `train(..., sink=writer.sink(run.id))`."""
        return lambda chunk: self.add(run_id, chunk)

    def pending(self, run_id: int) -> int:
        """Rows of the run buffered and not yet written."""
        return self._pending.get(run_id, 0)

    def add(self, run_id: int, chunk: Chunk) -> None:
        self.extend([(run_id, chunk)])

    def extend(self, chunks: Iterable[tuple[int, Chunk]]) -> None:
        """Buffer chunks of one or many runs; the runs with a full block buffered are written."""
        ready: list[int] = []
        for run_id, chunk in chunks:
            rows = len(check_chunk(chunk))  # refuse a bad chunk now, not at a later flush
            self._buffers.setdefault(run_id, []).append(chunk)
            self._pending[run_id] = self.pending(run_id) + rows
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
            merged = concat(self._buffers.pop(run_id))
            n = len(merged["step"])
            cut = n - n % self.block_rows if whole_blocks_only else n
            if cut < n:
                self._buffers[run_id] = [{name: column[cut:] for name, column in merged.items()}]
            self._pending[run_id] = n - cut
            if cut:
                out.append((run_id, {name: column[:cut] for name, column in merged.items()}))
        written = append_traces(session=self.session, chunks=out, block_rows=self.block_rows) if out else 0
        self.rows_written += written
        return written


# --- deleting ---------------------------------------------------------------------------------------


def delete_trace(*, session: Session, run_id: int, from_step: int = 0) -> int:
    """Remove the run's stored steps >= from_step (all by default); returns how many steps went.

    A block straddling from_step is cut short, so a restarted run appends from from_step on
    and every step keeps exactly one value.
    """
    params = {"run": run_id, "from": from_step}
    removed = _sum_rows(session, "run_id = %(run)s AND first_step >= %(from)s", params)
    straddling = _query(
        session,
        "SELECT first_step FROM trace_chunks WHERE run_id = %(run)s AND metric = 0 "
        "AND first_step < %(from)s AND last_step >= %(from)s",
        params,
    )
    _execute(session, "DELETE FROM trace_chunks WHERE run_id = %(run)s AND first_step >= %(from)s", params)
    for (first_step,) in straddling:
        block = _take_block(session, run_id, int(first_step))
        keep = int(np.searchsorted(block["step"], from_step, side="left"))
        kept = {name: column[:keep] for name, column in block.items()}
        _insert(session, encode(run_id, kept, np.asarray(kept["step"], dtype=np.int64), keep))  # new summaries
        removed += len(block["step"]) - keep
    return removed


def _take_block(session: Session, run_id: int, first_step: int) -> Chunk:
    """Read one stored block whole and delete it (to be written again, longer or shorter)."""
    block = _fetch(session, run_id, list(ALL_METRIC_IDS), first_step, first_step)
    params = {"run": run_id, "first": first_step}
    _execute(session, "DELETE FROM trace_chunks WHERE run_id = %(run)s AND first_step = %(first)s", params)
    return {"step": block.steps, **block.columns}


# --- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    """An inclusive step range; None is open."""

    start: int | None
    end: int | None

    @property
    def params(self) -> dict[str, int]:
        return {
            "start": -1 if self.start is None else self.start,
            "end": MAX_EXACT_STEP if self.end is None else self.end,
        }


@dataclass
class _Rows:
    """Full-resolution rows of the blocks read: steps plus the asked metric columns."""

    steps: Steps
    columns: dict[str, Floats]


# A block of consecutive steps (last - first + 1 == n_rows) needs no step data: arange rebuilds it.
_DATA = "CASE WHEN metric = 0 AND last_step - first_step + 1 = n_rows THEN NULL ELSE data END"


def _steps(first: int, last: int, blob: bytes | None) -> Steps:
    return np.arange(first, last + 1) if blob is None else np.frombuffer(blob, dtype=F8).astype(np.int64)


def _fetch(session: Session, run_id: int, ids: list[int], start: int | None, end: int | None) -> _Rows:
    """The rows of the blocks overlapping [start, end] (whole blocks), for the given metric ids."""
    sql = (
        f"SELECT metric, first_step, last_step, n_rows, {_DATA} FROM trace_chunks "
        f"WHERE run_id = %(run)s AND metric IN ({', '.join(map(str, [STEP, *ids]))}) "
        "AND first_step <= %(end)s AND last_step >= %(start)s ORDER BY metric, first_step"
    )
    rows = _query(session, sql, {"run": run_id, **_Range(start, end).params})
    step_rows = list(itertools.takewhile(lambda row: row[0] == STEP, rows))
    pieces = [_steps(first, last, blob) for _, first, last, _, blob in step_rows]
    steps = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    starts = np.cumsum([0, *(row[3] for row in step_rows)])[:-1]  # where each block begins in the output
    offsets = {row[1]: int(at) for row, at in zip(step_rows, starts, strict=True)}
    columns = {METRIC_NAMES[i]: np.full(len(steps), np.nan) for i in ids}
    for metric, first, _, n, blob in rows[len(step_rows) :]:
        columns[METRIC_NAMES[metric]][offsets[first] : offsets[first] + n] = np.frombuffer(blob, dtype=F8)
    return _Rows(steps, columns)


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
    step intervals from the first step; each non-empty one gives `step` (its first recorded
    step), `<name>` (NaN-aware mean), `<name>_min` and `<name>_max` (NaN-aware; NaN only if
    the bucket has no value). Over long ranges buckets are made of whole 64-row groups, so a
    bucket edge moves by less than a group; each bucket's values stay exact for its rows.
    """
    if max_points is not None and max_points < 1:
        raise ValueError("max_points must be at least 1")
    ids = metric_ids(metrics)
    span = _Range(start, end)
    if max_points is not None and _inner_rows(session, run_id, span) >= max_points * GROUP_ROWS * SUMMARY_MIN_GROUPS:
        return _read_summarized(session, run_id, ids, span, max_points)
    rows = _fetch(session, run_id, ids, start, end)
    lo = 0 if start is None else int(np.searchsorted(rows.steps, start, side="left"))
    hi = len(rows.steps) if end is None else int(np.searchsorted(rows.steps, end, side="right"))
    steps = rows.steps[lo:hi]
    columns = {name: values[lo:hi] for name, values in rows.columns.items()}
    if max_points is None or len(steps) <= max_points:
        return {"step": steps, **columns}
    return downsample(steps, columns, max_points)


def _inner_rows(session: Session, run_id: int, span: _Range) -> int:
    """Rows in the blocks wholly inside the range: those a summarized read takes from summaries."""
    where = "run_id = %(run)s AND first_step >= %(start)s AND last_step <= %(end)s"
    return _sum_rows(session, where, {"run": run_id, **span.params})


def _read_summarized(
    session: Session, run_id: int, ids: list[int], span: _Range, max_points: int
) -> dict[str, np.ndarray]:
    """Downsample from the summaries of inner blocks and the rows of the blocks cut by the range edges."""
    raw_ids = ", ".join(map(str, [STEP, *ids]))
    summary_ids = ", ".join(str(SUMMARY + i) for i in [STEP, *ids])
    sql = (
        f"SELECT first_step, metric, last_step, n_rows, {_DATA} FROM trace_chunks "
        "WHERE run_id = %(run)s AND first_step <= %(end)s AND last_step >= %(start)s AND ("
        f"(first_step >= %(start)s AND last_step <= %(end)s AND metric IN ({summary_ids})) OR "
        f"((first_step < %(start)s OR last_step > %(end)s) AND metric IN ({raw_ids}))"
        ") ORDER BY first_step, metric"
    )
    groups = _Groups(ids)
    for _, block in itertools.groupby(_query(session, sql, {"run": run_id, **span.params}), key=lambda row: row[0]):
        blobs = {metric: (first, last, n, blob) for first, metric, last, n, blob in block}
        if SUMMARY + STEP in blobs:
            groups.add_summaries(blobs)
        else:
            groups.add_rows(blobs, span)
    return groups.downsample(max_points)


class _Groups:
    """Groups of rows collected block by block: first step of each, and (4, groups) stats per metric."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.firsts: list[Steps] = []
        self.stats: dict[int, list[Floats]] = {i: [] for i in ids}

    def add_summaries(self, blobs: dict[int, tuple[int, int, int, bytes | None]]) -> None:
        """An inner block: its stored summaries; a metric without one was never measured there."""
        firsts = np.frombuffer(_blob(blobs[SUMMARY + STEP]), dtype=F8).astype(np.int64)
        for i in self.ids:
            found = blobs.get(SUMMARY + i)
            self.stats[i].append(unmeasured(len(firsts)) if found is None else stored_summary(_blob(found)))
        self.firsts.append(firsts)

    def add_rows(self, blobs: dict[int, tuple[int, int, int, bytes | None]], span: _Range) -> None:
        """An edge block: summarize its rows that lie inside the range."""
        first, last, n, step_blob = blobs[STEP]
        steps = _steps(first, last, step_blob)
        inside = (steps >= span.params["start"]) & (steps <= span.params["end"])
        for i in self.ids:
            found = blobs.get(i)
            values = np.full(n, np.nan) if found is None else np.frombuffer(_blob(found), dtype=F8)
            self.stats[i].append(summarize(values[inside]))
        self.firsts.append(steps[inside][::GROUP_ROWS])

    def downsample(self, max_points: int) -> dict[str, np.ndarray]:
        firsts = np.concatenate(self.firsts) if self.firsts else np.zeros(0, dtype=np.int64)
        if not len(firsts):
            return {"step": firsts, **{METRIC_NAMES[i]: np.zeros(0) for i in self.ids}}
        return downsample_groups(firsts, {METRIC_NAMES[i]: np.hstack(self.stats[i]) for i in self.ids}, max_points)


def _blob(row: tuple[int, int, int, bytes | None]) -> bytes:
    assert row[3] is not None, "only step rows of consecutive steps come without data"
    return row[3]


def trace_row_count(*, session: Session, run_id: int) -> int:
    """Stored steps of the run."""
    return _sum_rows(session, "run_id = %(run)s", {"run": run_id})


def trace_steps(*, session: Session, run_id: int) -> Steps:
    """Every stored step of the run, in order."""
    return _fetch(session, run_id, [], None, None).steps


# --- export -----------------------------------------------------------------------------------------


def iter_trace_pieces(
    *, session: Session, run_id: int, metrics: Sequence[str] | None = None, chunk_rows: int = EXPORT_ROWS
) -> Iterator[dict[str, np.ndarray]]:
    """The full-resolution trace in step order, in pieces of whole blocks, about chunk_rows rows each.

    Keyset pagination over the block index rather than one server-side cursor: each piece
    is a short query of its own, so memory stays bounded and SQLite behaves the same.
    """
    metric_ids(metrics)  # a bad name fails before the first piece
    spans = _query(
        session,
        "SELECT first_step, last_step, n_rows FROM trace_chunks WHERE run_id = %(run)s AND metric = 0 "
        "ORDER BY first_step",
        {"run": run_id},
    )
    i = 0
    while i < len(spans):
        j, rows = i + 1, spans[i][2]
        while j < len(spans) and rows < chunk_rows:
            rows += spans[j][2]
            j += 1
        yield read_trace(session=session, run_id=run_id, metrics=metrics, start=spans[i][0], end=spans[j - 1][1])
        i = j


def _arrow_schema(metrics: Sequence[str] | None) -> pa.Schema:
    names = [METRIC_NAMES[i] for i in metric_ids(metrics)]
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
    """CSV text in pieces, header first: `step` then the metrics in trace order; NaN is an empty field.

    Floats are written in their shortest round-trip form (Arrow's writer): pandas >= 3 reads
    them back bit-exact (pandas 2 with float_precision="round_trip").
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
    """Stream the trace into parquet, one row group per piece; NaN stays NaN. Returns the rows written."""
    schema = _arrow_schema(metrics)
    rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for piece in iter_trace_pieces(session=session, run_id=run_id, metrics=metrics, chunk_rows=chunk_rows):
            writer.write_table(_arrow_table(piece, schema, nan_as_null=False))
            rows += len(piece["step"])
    return rows
