"""Where the test databases are, and synthetic traces and comparisons shared by the store tests."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from eos_core.trace import METRICS
from store.models import TraceChunk

from ..postgres import SERVER, session_name

DATABASE = session_name("eos_test_store")
ADMIN_URL = f"{SERVER}/test"  # a database that exists: where test databases and schemas are made


# Cadence of each metric in recorded rows; 0 = never measured (a whole NaN column).
CADENCE = {name: 1 for name in METRICS} | {
    "drift": 2, "drift_se": 2, "rel_drift": 2, "sharpness": 10, "batch_sharpness": 10, "hvps": 10,
    "test_loss": 100, "test_acc": 100, "quad_drift": 0, "margin": 0,
}  # fmt: skip


def synthetic_trace(rows: int, *, every: int = 1, first: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """A trace like the engine's: NaN where a metric is not measured, an inf at a divergence."""
    rng = np.random.default_rng(seed)
    trace: dict[str, np.ndarray] = {"step": first + every * np.arange(rows, dtype=np.int64)}
    for name in METRICS:
        column = np.full(rows, np.nan)
        if CADENCE[name]:
            column[:: CADENCE[name]] = rng.normal(0.0, 1.0, len(column[:: CADENCE[name]])) * 10.0 ** rng.integers(-8, 8)
        trace[name] = column
    if rows:
        trace["param_norm"][-1] = np.inf  # how a diverged run ends
    return trace


def pieces(trace: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Cut a trace into consecutive chunks of the given sizes (cycled until the end)."""
    out, lo, n, i = [], 0, len(trace["step"]), 0
    while lo < n:
        hi = min(n, lo + sizes[i % len(sizes)])
        out.append({name: column[lo:hi].copy() for name, column in trace.items()})
        lo, i = hi, i + 1
    return out


def assert_trace_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    assert actual["step"].dtype == np.int64
    for name, values in expected.items():
        np.testing.assert_array_equal(actual[name], values, err_msg=name)  # NaN equals NaN here


def stored_blocks(session: Session, run_id: int) -> int:
    query = select(func.count()).where(TraceChunk.run_id == run_id, TraceChunk.metric == 0)
    return int(session.execute(query).scalar_one())
