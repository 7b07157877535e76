"""What the trace store costs on PostgreSQL: ingest, size, downsampled reads, exports.

A synthetic 1,000,000-step x 22-column trace with the NaN pattern of a real run (loss and
gradient norms every step, drift every 2, sharpness every 10, test metrics every 100, a
handful of metrics never measured) is written through `TraceWriter` in engine-sized chunks
of 256 rows, in one transaction, then:

  ingest           values/s (22 cells per step), from the first chunk to the commit   >= 400,000
  size             pg_total_relation_size(trace_chunks) (heap, TOAST, indexes) / cells  <= 16 B
  read 1 / 4       read_trace(max_points=2000) over the whole run, median of 10, each
                   in its own session as an API request would be (summaries path)      <= 100 ms
  read 4, window   the same over the middle 40% of the run: 200 rows per bucket, under
                   the summary threshold, so every row of the window is read           <= 100 ms
  csv / parquet    full-resolution export of all 22 columns, rows/s                    >= 100k / 250k
  naive ORM        for comparison: a row-per-step table (22 float columns) filled with
                   session.add_all + flush on a 20,000-row sample; rows/s, values/s, B/value

Everything lives in a fresh schema that is dropped at the end. Run from the repository root:

    python bench/store.py                    # about a minute on 2 CPU cores
    EOS_BENCH_DATABASE_URL=postgresql+psycopg://user@host/db python bench/store.py --steps 200000
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import BigInteger, Engine, Float, MetaData, text
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eos_core.trace import COLUMNS, METRICS
from store.db import make_engine, session_factory, upgrade
from store.models import Experiment, Run, User
from store.traces import TraceWriter, iter_trace_csv, read_trace, write_trace_parquet

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ENGINE_CHUNK = 256
# Cadence of each metric in steps; 0 = never measured in this run (all NaN).
CADENCE = {
    "loss": 1, "acc": 1, "batch_loss": 1, "grad_norm": 1, "batch_grad_norm": 1, "param_norm": 1, "eta_loss": 1,
    "drift": 2, "drift_se": 2, "drift_samples_used": 2, "rel_drift": 2, "stable": 2, "stable_p": 2,
    "quad_drift": 0, "sharpness": 10, "sharpness_residual": 10, "hvps": 10, "batch_sharpness": 10,
    "margin": 0, "test_loss": 100, "test_acc": 100,
}  # fmt: skip


def synthetic_trace(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random-mantissa values (incompressible, like real losses) at each metric's cadence."""
    rng = np.random.default_rng(seed)
    trace: dict[str, np.ndarray] = {"step": np.arange(steps, dtype=np.int64)}
    for name in METRICS:
        every = CADENCE[name]
        column = np.full(steps, np.nan)
        if every:
            column[::every] = np.exp(rng.normal(0.0, 1.0, len(column[::every])))
        trace[name] = column
    return trace


class NaiveBase(DeclarativeBase):
    metadata = MetaData()


# A row per step, every metric a column: what an ORM-first design would write. Built with
# type() because its 21 metric columns come from eos_core.trace.METRICS.
NaiveRow: Any = type(
    "NaiveRow",
    (NaiveBase,),
    {
        "__tablename__": "naive_trace",
        "id": mapped_column(BigInteger, primary_key=True),
        "run_id": mapped_column(BigInteger, index=True),
        "step": mapped_column(BigInteger),
        **{name: mapped_column(Float, nullable=True) for name in METRICS},
    },
)


@contextmanager
def fresh_schema(url: str) -> Iterator[Engine]:
    schema = f"eos_bench_{uuid.uuid4().hex[:8]}"
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def make_run(sessions: Callable[[], Session]) -> int:
    with sessions() as session, session.begin():
        user = User(name="bench")
        experiment = Experiment(name="bench", owner=user, spec={})
        run = Run(experiment=experiment, spec={}, spec_hash="0" * 64)
        session.add_all([user, experiment, run])
        session.flush()
        return run.id


def bench_ingest(sessions: Callable[[], Session], run_id: int, trace: dict[str, np.ndarray]) -> float:
    n = len(trace["step"])
    t0 = time.perf_counter()
    with sessions() as session, session.begin(), TraceWriter(session=session) as writer:
        for lo in range(0, n, ENGINE_CHUNK):
            # The engine hands over copies (TraceRecorder.flush), so copy here too.
            writer.add(run_id, {name: column[lo : lo + ENGINE_CHUNK].copy() for name, column in trace.items()})
    return time.perf_counter() - t0


def bench_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_total_relation_size('trace_chunks')")).scalar_one())


def bench_read(
    sessions: Callable[[], Session], run_id: int, metrics: list[str], window: tuple[int, int] | None = None
) -> float:
    start, end = window or (None, None)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        with sessions() as session:
            out = read_trace(session=session, run_id=run_id, metrics=metrics, start=start, end=end, max_points=2000)
        times.append(time.perf_counter() - t0)
        assert len(out["step"]) <= 2000
    return statistics.median(times)


def bench_csv(sessions: Callable[[], Session], run_id: int) -> float:
    t0 = time.perf_counter()
    with sessions() as session:
        size = sum(len(piece) for piece in iter_trace_csv(session=session, run_id=run_id))
    assert size > 0
    return time.perf_counter() - t0


def bench_parquet(sessions: Callable[[], Session], run_id: int) -> float:
    t0 = time.perf_counter()
    with sessions() as session:
        write_trace_parquet(session=session, run_id=run_id, metrics=None, sink=io.BytesIO())
    return time.perf_counter() - t0


def bench_naive(
    engine: Engine, sessions: Callable[[], Session], run_id: int, trace: dict[str, np.ndarray], rows: int
) -> tuple[float, float]:
    """ORM inserts of a row per step; returns (seconds, bytes per value)."""
    NaiveBase.metadata.create_all(engine)
    records = [
        {name: (int(trace[name][i]) if name == "step" else _none_for_nan(trace[name][i])) for name in COLUMNS}
        for i in range(rows)
    ]
    t0 = time.perf_counter()
    with sessions() as session, session.begin():
        session.add_all(NaiveRow(run_id=run_id, **record) for record in records)
    seconds = time.perf_counter() - t0
    with engine.connect() as conn:
        size = int(conn.execute(text("SELECT pg_total_relation_size('naive_trace')")).scalar_one())
    return seconds, size / (rows * len(COLUMNS))


def _none_for_nan(value: Any) -> float | None:
    return None if np.isnan(value) else float(value)


def row(name: str, value: str, target: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    return f"| {name:<38} | {value:>12} | {target:>10} | {verdict:<4} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--naive-rows", type=int, default=20_000)
    args = parser.parse_args()
    url = os.environ.get("EOS_BENCH_DATABASE_URL", DEFAULT_URL)
    trace = synthetic_trace(args.steps)
    cells = args.steps * len(COLUMNS)
    with fresh_schema(url) as engine:
        upgrade(engine)
        sessions = session_factory(engine)
        run_id = make_run(sessions)
        ingest = bench_ingest(sessions, run_id, trace)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE trace_chunks"))  # what autovacuum does soon after a run
        size = bench_size(engine)
        read1 = bench_read(sessions, run_id, ["loss"])
        four = ["loss", "sharpness", "drift", "grad_norm"]
        read4 = bench_read(sessions, run_id, four)
        # 200 rows per bucket: under the summary threshold, so every row of the window is read.
        window = (args.steps * 3 // 10, args.steps * 7 // 10 - 1)
        read4_rows = bench_read(sessions, run_id, four, window)
        csv = bench_csv(sessions, run_id)
        parquet = bench_parquet(sessions, run_id)
        naive, naive_bytes = bench_naive(engine, sessions, run_id, trace, args.naive_rows)

    print(
        f"trace store on {engine.url.render_as_string(hide_password=True)}: {args.steps:,} steps x {len(COLUMNS)} "
        f"columns ({cells:,} cells), engine chunks of {ENGINE_CHUNK} rows"
    )
    print(row("measure", "value", "target", None))
    print(f"|{'-' * 40}|{'-' * 14}|{'-' * 12}|{'-' * 6}|")
    print(row("ingest, TraceWriter (values/s)", f"{cells / ingest:,.0f}", ">= 400,000", cells / ingest >= 400_000))
    print(row("stored size (bytes/value)", f"{size / cells:.2f}", "<= 16", size / cells <= 16))
    print(row("read 1 metric -> 2,000 pts (ms)", f"{read1 * 1e3:.1f}", "<= 100", read1 <= 0.1))
    print(row("read 4 metrics -> 2,000 pts (ms)", f"{read4 * 1e3:.1f}", "<= 100", read4 <= 0.1))
    print(row("read 4 metrics, 40% window (ms)", f"{read4_rows * 1e3:.1f}", "<= 100", read4_rows <= 0.1))
    print(row("CSV export, all columns (rows/s)", f"{args.steps / csv:,.0f}", ">= 100,000", args.steps / csv >= 1e5))
    print(
        row(
            "Parquet export, all columns (rows/s)",
            f"{args.steps / parquet:,.0f}",
            ">= 250,000",
            args.steps / parquet >= 2.5e5,
        )
    )
    print(row("naive ORM row per step (rows/s)", f"{args.naive_rows / naive:,.0f}", "reference", None))
    print(row("naive ORM row per step (values/s)", f"{args.naive_rows * len(COLUMNS) / naive:,.0f}", "reference", None))
    print(row("naive row per step (bytes/value)", f"{naive_bytes:.2f}", "reference", None))
    print(
        f"ingest {ingest:.2f} s for {cells / 1e6:.0f}M values; stored {size / 2**20:.1f} MiB; "
        f"naive ORM would need {args.steps / (args.naive_rows / naive):.0f} s for the same run"
    )


if __name__ == "__main__":
    main()
