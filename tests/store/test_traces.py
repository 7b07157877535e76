"""Traces in and out of the store, on PostgreSQL and SQLite: exact round trips, downsampling
checked bucket by bucket against numpy, ranges, exports, restarts."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy.orm import Session

from eos_core.trace import COLUMNS, METRICS
from store.traces import (
    GROUP_ROWS,
    SUMMARY_MIN_GROUPS,
    BadChunk,
    TraceOverlap,
    TraceWriter,
    UnknownMetric,
    append_trace,
    append_traces,
    delete_trace,
    iter_trace_csv,
    read_trace,
    trace_last_step,
    trace_row_count,
    trace_steps,
    write_trace_parquet,
)

from .support import assert_trace_equal, pieces, stored_blocks, synthetic_trace


def write(session: Session, run_id: int, trace: dict[str, np.ndarray], sizes: list[int], block_rows: int) -> None:
    for chunk in pieces(trace, sizes):
        append_trace(session=session, run_id=run_id, chunk=chunk, block_rows=block_rows)


def check_buckets(
    out: dict[str, np.ndarray], trace: dict[str, np.ndarray], names: Sequence[str], max_points: int
) -> None:
    """Every bucket's min, max and mean equal numpy's over the rows of that bucket."""
    steps = trace["step"]
    assert 1 < len(out["step"]) <= max_points
    assert out["step"][0] == steps[0]
    edges = np.searchsorted(steps, out["step"])  # bucket k = rows [edges[k], edges[k+1])
    assert np.all(np.diff(edges) > 0)
    for k, (lo, hi) in enumerate(zip(edges, [*edges[1:], len(steps)], strict=True)):
        for name in names:
            values = trace[name][lo:hi]
            measured = values[~np.isnan(values)]
            if not len(measured):
                assert np.isnan([out[name][k], out[f"{name}_min"][k], out[f"{name}_max"][k]]).all()
                continue
            assert out[f"{name}_min"][k] == measured.min(), (name, k)
            assert out[f"{name}_max"][k] == measured.max(), (name, k)
            np.testing.assert_allclose(out[name][k], measured.mean(), rtol=1e-9, err_msg=f"{name} bucket {k}")


def test_round_trip_in_uneven_chunks(session: Session, run_id: int) -> None:
    trace = synthetic_trace(10_000, every=3, first=7)
    write(session, run_id, trace, sizes=[256, 1000, 37, 5000], block_rows=4096)
    assert_trace_equal(read_trace(session=session, run_id=run_id), trace)
    assert trace_row_count(session=session, run_id=run_id) == 10_000
    assert trace_last_step(session=session, run_id=run_id) == trace["step"][-1]


def test_writer_buffers_engine_chunks_into_blocks(session: Session, run_id: int) -> None:
    trace = synthetic_trace(5000)
    writer = TraceWriter(session=session, block_rows=1024)
    sink = writer.sink(run_id)
    for chunk in pieces(trace, [256]):
        sink(chunk)
    # Only whole blocks are out before the flush; the rest waits in the buffer.
    assert trace_row_count(session=session, run_id=run_id) == 4096
    assert writer.pending(run_id) == 5000 - 4096
    writer.flush()
    assert writer.pending(run_id) == 0
    assert stored_blocks(session, run_id) == 5  # ceil(5000 / 1024), not 5000 / 256
    assert_trace_equal(read_trace(session=session, run_id=run_id), trace)


@pytest.mark.parametrize(
    ("max_points", "path"),
    [(50, "summaries"), (1000, "rows")],  # 400 and 20 rows per bucket against a 4-group threshold of 256
)
def test_downsampled_buckets_match_numpy(session: Session, run_id: int, max_points: int, path: str) -> None:
    trace = synthetic_trace(20_000, every=2, first=10)
    # Blocks that do not line up with summary groups, as a worker flushing on a timer makes them.
    write(session, run_id, trace, sizes=[3000, 777, 5000], block_rows=2500)
    rows_per_bucket = 20_000 / max_points
    assert (rows_per_bucket >= GROUP_ROWS * SUMMARY_MIN_GROUPS) == (path == "summaries")
    names = ["loss", "sharpness", "test_loss", "param_norm", "margin"]
    out = read_trace(session=session, run_id=run_id, metrics=names, max_points=max_points)
    assert set(out) == {"step"} | {f"{n}{s}" for n in names for s in ("", "_min", "_max")}
    check_buckets(out, trace, names, max_points)


@pytest.mark.parametrize(("start", "end"), [(1001, 38_999), (5, 20_000), (12_345, 60_000)])
def test_downsampled_range_matches_numpy(session: Session, run_id: int, start: int, end: int) -> None:
    trace = synthetic_trace(20_000, every=2)
    write(session, run_id, trace, sizes=[4096], block_rows=4096)
    out = read_trace(session=session, run_id=run_id, metrics=["loss", "sharpness"], start=start, end=end, max_points=50)
    inside = (trace["step"] >= start) & (trace["step"] <= end)
    check_buckets(out, {name: column[inside] for name, column in trace.items()}, ["loss", "sharpness"], 50)


def test_single_step_spike_survives_downsampling(session: Session, run_id: int) -> None:
    trace = synthetic_trace(100_000)
    trace["loss"] = np.linspace(2.0, 0.1, 100_000)
    trace["loss"][54_321] = 1e6
    write(session, run_id, trace, sizes=[100_000], block_rows=4096)
    out = read_trace(session=session, run_id=run_id, metrics=["loss"], max_points=100)
    assert len(out["step"]) <= 100
    spike = np.searchsorted(out["step"], 54_321, side="right") - 1
    assert out["loss_max"][spike] == 1e6
    assert np.count_nonzero(out["loss_max"] == 1e6) == 1
    assert out["loss"][spike] < 1e6 / 100  # the mean alone would hide it: one row in a bucket of ~1000


def test_start_end_filtering(session: Session, run_id: int) -> None:
    trace = synthetic_trace(10_000, every=5)
    write(session, run_id, trace, sizes=[999], block_rows=999)
    out = read_trace(session=session, run_id=run_id, metrics=["loss", "hvps"], start=1232, end=20_003)
    inside = (trace["step"] >= 1232) & (trace["step"] <= 20_003)
    assert_trace_equal(out, {name: trace[name][inside] for name in ("step", "loss", "hvps")})
    assert out["step"][0] == 1235 and out["step"][-1] == 20_000
    empty = read_trace(session=session, run_id=run_id, metrics=["loss"], start=1231, end=1234)
    assert len(empty["step"]) == 0 and len(empty["loss"]) == 0
    few = read_trace(session=session, run_id=run_id, metrics=["loss"], start=100, end=200, max_points=1000)
    assert set(few) == {"step", "loss"} and len(few["step"]) == 21  # fewer rows than max_points: full resolution


def test_unknown_metric_names_the_valid_ones(session: Session, run_id: int) -> None:
    with pytest.raises(UnknownMetric, match="lossy") as info:
        read_trace(session=session, run_id=run_id, metrics=["loss", "lossy"])
    assert isinstance(info.value, ValueError)
    assert "sharpness" in str(info.value) and "batch_sharpness" in str(info.value)
    with pytest.raises(UnknownMetric):
        list(iter_trace_csv(session=session, run_id=run_id, metrics=["nope"]))


def test_csv_export_parses_back_to_the_trace(session: Session, run_id: int) -> None:
    trace = synthetic_trace(7000, every=2)
    write(session, run_id, trace, sizes=[1024], block_rows=1024)
    parts = list(iter_trace_csv(session=session, run_id=run_id, chunk_rows=2000))
    assert len(parts) > 3  # streamed in pieces, not built whole
    frame = pd.read_csv(io.StringIO("".join(parts)))
    assert list(frame.columns) == list(COLUMNS)
    assert_trace_equal({name: frame[name].to_numpy() for name in COLUMNS}, trace)


def test_csv_export_of_some_metrics(session: Session, run_id: int) -> None:
    trace = synthetic_trace(300)
    write(session, run_id, trace, sizes=[300], block_rows=4096)
    text = "".join(iter_trace_csv(session=session, run_id=run_id, metrics=["sharpness", "loss"]))
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns) == ["step", "loss", "sharpness"]  # trace column order
    np.testing.assert_array_equal(frame["sharpness"].to_numpy(), trace["sharpness"])


def test_parquet_export_reads_back_equal(session: Session, run_id: int) -> None:
    trace = synthetic_trace(7000, every=2)
    write(session, run_id, trace, sizes=[1024], block_rows=1024)
    sink = io.BytesIO()
    rows = write_trace_parquet(session=session, run_id=run_id, metrics=None, sink=sink, chunk_rows=2000)
    assert rows == 7000
    sink.seek(0)
    parquet = pq.ParquetFile(sink)
    assert parquet.metadata.num_row_groups > 3
    table = parquet.read()
    assert table.schema.field("step").type == "int64"
    assert_trace_equal({name: table[name].to_numpy() for name in COLUMNS}, trace)


def test_empty_trace(session: Session, run_id: int) -> None:
    out = read_trace(session=session, run_id=run_id, metrics=["loss"], max_points=10)
    assert len(out["step"]) == 0 and out["step"].dtype == np.int64
    assert trace_last_step(session=session, run_id=run_id) is None
    assert "".join(iter_trace_csv(session=session, run_id=run_id, metrics=["loss"])) == "step,loss\n"


def test_delete_from_a_step_then_reappend(session: Session, run_id: int) -> None:
    first = synthetic_trace(10_000, seed=1)
    write(session, run_id, first, sizes=[10_000], block_rows=4096)
    assert delete_trace(session=session, run_id=run_id, from_step=5000) == 5000  # cuts the 4096-8191 block
    assert trace_last_step(session=session, run_id=run_id) == 4999
    with pytest.raises(TraceOverlap):
        append_trace(session=session, run_id=run_id, chunk=synthetic_trace(10, first=4999))
    second = synthetic_trace(15_000, first=5000, seed=2)
    write(session, run_id, second, sizes=[256], block_rows=4096)
    np.testing.assert_array_equal(trace_steps(session=session, run_id=run_id), np.arange(20_000))
    assert trace_row_count(session=session, run_id=run_id) == 20_000
    expected = {name: np.concatenate([first[name][:5000], second[name]]) for name in COLUMNS}
    assert_trace_equal(read_trace(session=session, run_id=run_id), expected)
    # The cut block's summaries were rebuilt: summarized reads agree with the rows.
    check_buckets(read_trace(session=session, run_id=run_id, metrics=METRICS, max_points=60), expected, METRICS, 60)


def test_delete_everything(session: Session, run_id: int) -> None:
    write(session, run_id, synthetic_trace(3000), sizes=[1000], block_rows=1000)
    assert delete_trace(session=session, run_id=run_id) == 3000
    assert trace_row_count(session=session, run_id=run_id) == 0
    assert trace_last_step(session=session, run_id=run_id) is None
    append_trace(session=session, run_id=run_id, chunk=synthetic_trace(10))
    assert trace_row_count(session=session, run_id=run_id) == 10


def test_overlapping_or_malformed_chunks_are_refused(session: Session, run_id: int) -> None:
    append_trace(session=session, run_id=run_id, chunk=synthetic_trace(1000))
    with pytest.raises(TraceOverlap, match="delete_trace"):
        append_trace(session=session, run_id=run_id, chunk=synthetic_trace(1000, first=500))
    backwards = synthetic_trace(10, first=2000)
    backwards["step"] = backwards["step"][::-1].copy()
    with pytest.raises(BadChunk, match="increasing"):
        append_trace(session=session, run_id=run_id, chunk=backwards)
    missing = synthetic_trace(10, first=2000)
    del missing["hvps"]
    with pytest.raises(BadChunk, match="hvps"):
        append_trace(session=session, run_id=run_id, chunk=missing)
    short = synthetic_trace(10, first=2000)
    short["loss"] = short["loss"][:5]
    with pytest.raises(BadChunk, match="equal length"):
        append_trace(session=session, run_id=run_id, chunk=short)
    assert trace_row_count(session=session, run_id=run_id) == 1000


def test_append_traces_for_two_runs_at_once(session: Session, new_run: Callable[[], int]) -> None:
    a, b = new_run(), new_run()
    trace_a, trace_b = synthetic_trace(3000, seed=1), synthetic_trace(2000, every=4, seed=2)
    chunks = [(a, chunk) for chunk in pieces(trace_a, [500])] + [(b, chunk) for chunk in pieces(trace_b, [500])]
    assert append_traces(session=session, chunks=chunks) == 5000
    assert_trace_equal(read_trace(session=session, run_id=a), trace_a)
    assert_trace_equal(read_trace(session=session, run_id=b), trace_b)


def test_writer_interleaves_runs(session: Session, new_run: Callable[[], int]) -> None:
    a, b = new_run(), new_run()
    trace_a, trace_b = synthetic_trace(3000, seed=3), synthetic_trace(3000, first=100, seed=4)
    with TraceWriter(session=session, block_rows=1000) as writer:
        for ca, cb in zip(pieces(trace_a, [256]), pieces(trace_b, [256]), strict=True):
            writer.extend([(a, ca), (b, cb)])
    assert_trace_equal(read_trace(session=session, run_id=a), trace_a)
    assert_trace_equal(read_trace(session=session, run_id=b), trace_b)
    assert stored_blocks(session, a) == stored_blocks(session, b) == 3


def test_small_appends_merge_into_the_last_block(session: Session, run_id: int) -> None:
    """A worker flushing on a timer writes a few hundred rows at a time; blocks still fill up."""
    trace = synthetic_trace(6000, every=3)
    chunks = pieces(trace, [100, 300, 37])
    for chunk in chunks[:10]:
        append_trace(session=session, run_id=run_id, chunk=chunk)
    assert stored_blocks(session, run_id) == 1
    for chunk in chunks[10:]:
        append_trace(session=session, run_id=run_id, chunk=chunk)
    assert stored_blocks(session, run_id) == 2  # ceil(6000 / 4096)
    assert_trace_equal(read_trace(session=session, run_id=run_id), trace)
    check_buckets(read_trace(session=session, run_id=run_id, metrics=METRICS, max_points=20), trace, METRICS, 20)


def test_appends_without_merge_keep_their_blocks(session: Session, run_id: int) -> None:
    trace = synthetic_trace(1000)
    append_traces(session=session, chunks=[(run_id, chunk) for chunk in pieces(trace, [100])][:5])
    assert stored_blocks(session, run_id) == 1  # chunks of one run in one call form one block
    for chunk in pieces(trace, [100])[5:]:
        append_traces(session=session, chunks=[(run_id, chunk)], merge=False)
    assert stored_blocks(session, run_id) == 6
    assert_trace_equal(read_trace(session=session, run_id=run_id), trace)
