"""GET /runs/{id}/trace (json, csv, parquet) and GET /compare."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from eos_core.trace import METRICS
from store import queries
from store.traces import UnknownMetric, read_trace, trace_row_count

from ..alignment import common_grid, on_grid
from ..deps import CurrentUser, SessionDep, SessionsDep
from ..inputs import MAX_ID, MAX_STEP, RunId, integer_pattern
from ..schemas import ComparePublic, CompareSeries, Message, Responses, TracePublic
from ..streaming import csv_stream, parquet_stream
from ..views import compare_run, json_column, json_columns

router = APIRouter(tags=["traces"])

ERRORS: Responses = {401: {"model": Message}, 404: {"model": Message}}
MAX_COMPARE_RUNS = 50

_METRIC = " *(?:" + "|".join(re.escape(name) for name in METRICS) + ") *"
METRICS_PATTERN = f"^{_METRIC}(?:,{_METRIC})*$"
_RUN = f" *{integer_pattern(MAX_ID)} *"
RUNS_PATTERN = f"^{_RUN}(?:,{_RUN}){{0,{MAX_COMPARE_RUNS - 1}}}$"

MetricsQuery = Annotated[
    str | None,
    Query(
        description="comma-separated metric names (all when omitted)",
        examples=["loss,drift"],
        json_schema_extra={"pattern": METRICS_PATTERN},
    ),
]
MaxPoints = Annotated[int, Query(ge=1, le=100_000, description="downsample to at most this many points")]
StartStep = Annotated[int | None, Query(ge=0, le=MAX_STEP, description="first step (inclusive)")]
EndStep = Annotated[int | None, Query(ge=0, le=MAX_STEP, description="last step (inclusive)")]


class TraceFormat(StrEnum):
    json = "json"
    csv = "csv"
    parquet = "parquet"


def _refuse(parameter: str, kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ["query", parameter], "msg": message}])


def parse_metrics(text: str | None) -> list[str] | None:
    """'loss,drift' -> ['loss', 'drift'] (METRICS_PATTERN), refusing unknown names (422 listing the valid ones)."""
    if text is None:
        return None
    names = [name.strip(" ") for name in text.split(",")]
    if "" in names:
        raise _refuse("metrics", "metrics_syntax", f"give metric names separated by commas, none empty: {text!r}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UnknownMetric(unknown)
    return list(dict.fromkeys(names))


def parse_ids(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3] (RUNS_PATTERN): 1 to MAX_COMPARE_RUNS ids, each 1 to 2^63 - 1, repeats dropped."""
    parts = [part.strip(" ") for part in text.split(",")]
    if not all(re.fullmatch("[0-9]+", part) for part in parts):
        raise _refuse("runs", "int_parsing", f"give run ids (integers) separated by commas: {text!r}")
    if len(parts) > MAX_COMPARE_RUNS:
        raise _refuse("runs", "too_many", f"give 1 to {MAX_COMPARE_RUNS} run ids, not {len(parts)}")
    ids = [int(part) for part in parts]
    out_of_range = [i for i in ids if not 1 <= i <= MAX_ID]
    if out_of_range:
        raise _refuse("runs", "out_of_range", f"run ids lie between 1 and {MAX_ID}; got {out_of_range[0]}")
    return list(dict.fromkeys(ids))


def _with_ranges(columns: dict[str, list[float | None]], names: list[str]) -> dict[str, list[float | None]]:
    """Full-resolution reads have no min/max: a point's range is the point itself."""
    for name in names:
        columns.setdefault(f"{name}_min", columns[name])
        columns.setdefault(f"{name}_max", columns[name])
    return columns


# Traces longer than this are read already downsampled (finer than the grid, from the stored
# summaries) for /compare: fifty million-step traces would otherwise be gigabytes per request.
COMPARE_FULL_ROWS = 100_000


def _compare_trace(
    session: Session, run_id: int, names: list[str], start: int | None, end: int | None, max_points: int
) -> dict[str, np.ndarray]:
    long = trace_row_count(session=session, run_id=run_id) > COMPARE_FULL_ROWS
    fine = 8 * max_points if long else None
    return read_trace(session=session, run_id=run_id, metrics=names, start=start, end=end, max_points=fine)


@router.get(
    "/runs/{run_id}/trace",
    response_model=TracePublic,
    responses={
        **ERRORS,
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}, "description": "json, csv or parquet"},
    },
)
def get_trace(
    run_id: RunId,
    session: SessionDep,
    sessions: SessionsDep,
    _user: CurrentUser,
    metrics: MetricsQuery = None,
    start: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="first step (inclusive); json only")] = None,
    end: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="last step (inclusive); json only")] = None,
    max_points: MaxPoints = 1000,
    format: Annotated[TraceFormat, Query(description="csv and parquet stream the full trace")] = TraceFormat.json,
) -> TracePublic | StreamingResponse:
    """The run's trace. JSON: downsampled into at most `max_points` equal step buckets, each with the bucket's
    first step, and per metric the NaN-aware mean, `_min` and `_max` (a one-step spike survives); NaN is null.
    CSV / parquet: every recorded step, streamed (an empty CSV field is NaN)."""
    names = parse_metrics(metrics)
    queries.get_run(session=session, run_id=run_id)  # 404 before anything streams
    if format is TraceFormat.csv:
        headers = {"Content-Disposition": f'attachment; filename="run-{run_id}.csv"'}
        return StreamingResponse(csv_stream(sessions, run_id, names), media_type="text/csv", headers=headers)
    if format is TraceFormat.parquet:
        headers = {"Content-Disposition": f'attachment; filename="run-{run_id}.parquet"'}
        return StreamingResponse(
            parquet_stream(sessions, run_id, names), media_type="application/vnd.apache.parquet", headers=headers
        )
    trace = read_trace(session=session, run_id=run_id, metrics=names, start=start, end=end, max_points=max_points)
    step = trace.pop("step")
    chosen = names if names is not None else list(METRICS)
    return TracePublic(
        run_id=run_id,
        metrics=chosen,
        points=len(step),
        step=step.tolist(),
        columns=_with_ranges(json_columns(trace), chosen),
    )


@router.get("/compare", responses=ERRORS)
def compare(
    session: SessionDep,
    _user: CurrentUser,
    runs: Annotated[
        str,
        Query(
            description=f"comma-separated run ids: 1 to {MAX_COMPARE_RUNS} of them",
            examples=["1,2,3"],
            json_schema_extra={"pattern": RUNS_PATTERN},
        ),
    ],
    metrics: Annotated[
        str,
        Query(
            description="comma-separated metric names",
            examples=["loss,sharpness"],
            json_schema_extra={"pattern": METRICS_PATTERN},
        ),
    ] = "loss",
    start: StartStep = None,
    end: EndStep = None,
    max_points: MaxPoints = 500,
) -> ComparePublic:
    """Runs side by side: their parameters and summaries, and each metric on one common step grid
    (at most `max_points` equal buckets spanning all the runs; a bucket's value is the NaN-aware mean of the
    run's steps in it, null where the run has none)."""
    ids, names = parse_ids(runs), parse_metrics(metrics) or []
    rows = [queries.get_run(session=session, run_id=i) for i in ids]
    traces = [_compare_trace(session, i, names, start, end, max_points) for i in ids]
    grid = common_grid((t["step"] for t in traces), max_points)
    series = [
        CompareSeries(run_id=i, columns={n: json_column(on_grid(t["step"], t[n], grid)) for n in names})
        for i, t in zip(ids, traces, strict=True)
    ]
    return ComparePublic(runs=[compare_run(r) for r in rows], metrics=names, step=grid.steps.tolist(), series=series)
