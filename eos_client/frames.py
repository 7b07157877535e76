"""API JSON -> pandas DataFrames: runs (one row per run), traces (long: one row per run and step), events."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from eos_core.summary import RunSummary

from .models import Run

# Summary fields that `runs()` shows by default, in this order (all scalars; see eos_core/summary.py).
SUMMARY_FIELDS: tuple[str, ...] = (
    "entrance_step",
    "exits_observed",
    "exit_rate_per_1000",
    "fraction_in_S_after_entrance",
    "rate_slope",
    "rate_C",
    "kappa_B",
    "kappa_B_bound",
    "final_loss",
    "final_acc",
    "final_test_acc",
    "best_loss",
    "diverged_step",
    "seconds_per_step",
)
RUN_COLUMNS = ("run", "experiment", "name", "status", "progress", "step", "steps")
RANGES = ("", "_min", "_max")
SummaryLike = RunSummary | Mapping[str, Any] | None


def summary_value(summary: SummaryLike, name: str) -> Any:
    """A RunSummary field by name; `seconds_per_step` lives under `timing`. None where absent."""
    s = RunSummary.from_stored(summary)
    if s is None:
        return None
    if name == "seconds_per_step":
        return s.timing.seconds_per_step if s.timing is not None else None
    return getattr(s, name, None) if name in RunSummary.model_fields else None


def scalar_fields(summaries: Iterable[SummaryLike]) -> list[str]:
    """Every scalar RunSummary field set in any of the summaries, in the model's order (not `status`)."""
    present: set[str] = set()
    for summary in summaries:
        s = RunSummary.from_stored(summary)
        if s is not None:
            present |= {k for k, v in s if v is not None and not isinstance(v, BaseModel | dict | list)}
    return [k for k in RunSummary.model_fields if k in present and k != "status"]


def _params_columns(params: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for p in params for key in p))


def runs_frame(runs: Sequence[Run], fields: Sequence[str] = SUMMARY_FIELDS) -> pd.DataFrame:
    """One row per run: run, experiment, name, status, progress, step, steps, the swept params (dotted
    names such as `optimizer.lr`), the chosen summary fields and `error`."""
    params = _params_columns(r.params for r in runs)
    columns = [*RUN_COLUMNS, *params, *fields, "error"]
    rows = [
        [
            r.id,
            r.experiment_id,
            r.name,
            r.status,
            r.progress,
            r.step,
            r.steps,
            *(r.params.get(p) for p in params),
            *(summary_value(r.summary, f) for f in fields),
            r.error,
        ]
        for r in runs
    ]
    return pd.DataFrame(rows, columns=columns)


def compare_frame(items: Sequence[dict[str, Any]], fields: Sequence[str] = SUMMARY_FIELDS) -> pd.DataFrame:
    """The `runs` of a /compare answer: run, experiment, name, status, params, summary fields."""
    params = _params_columns(i.get("params") or {} for i in items)
    columns = ["run", "experiment", "name", "status", *params, *fields]
    rows = [
        [
            i["id"],
            i["experiment_id"],
            i.get("name", ""),
            i["status"],
            *((i.get("params") or {}).get(p) for p in params),
            *(summary_value(i.get("summary"), f) for f in fields),
        ]
        for i in items
    ]
    return pd.DataFrame(rows, columns=columns)


def kappa_frame(body: dict[str, Any]) -> pd.DataFrame:
    """GET /experiments/{id}/kappa: one row per batch size (see api.schemas.KappaPublic)."""
    columns = ["batch_size", "runs", "kappa_B", "kappa_B_bound", "kappa_low", "kappa_high", "rows_outside", "rows_in_S"]
    rows = [
        [
            i["batch_size"],
            i["runs"],
            i["kappa_B"],
            i["kappa_B_bound"],
            *(i["kappa_B_interval"] or [None, None]),
            i["kappa_B_rows_outside"],
            i["kappa_B_rows_in_S"],
        ]
        for i in body["items"]
    ]
    return pd.DataFrame(rows, columns=columns)


def floats(values: Sequence[float | None]) -> np.ndarray:
    """A JSON column (null for NaN) as float64."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def trace_json_frame(body: dict[str, Any]) -> pd.DataFrame:
    """A downsampled /trace answer: run, step, then per metric its bucket mean, `_min` and `_max`."""
    steps = np.asarray(body["step"], dtype=np.int64)
    data: dict[str, np.ndarray] = {"run": np.full(len(steps), int(body["run_id"])), "step": steps}
    for metric in body["metrics"]:
        for suffix in RANGES:
            data[metric + suffix] = floats(body["columns"][metric + suffix])
    return pd.DataFrame(data)


def trace_parquet_frame(run_id: int, content: bytes) -> pd.DataFrame:
    """A full-resolution parquet export: run, step, one float64 column per metric (NaN where not measured)."""
    frame = pd.read_parquet(io.BytesIO(content))
    frame.insert(0, "run", np.full(len(frame), run_id, dtype=np.int64))
    return frame


def series_frame(body: dict[str, Any]) -> pd.DataFrame:
    """The `series` of a /compare answer as one long frame: run, step, metrics."""
    grid = np.asarray(body["step"], dtype=np.int64)
    frames = [
        pd.DataFrame(
            {
                "run": np.full(len(grid), int(s["run_id"])),
                "step": grid,
                **{m: floats(s["columns"][m]) for m in body["metrics"]},
            }
        )
        for s in body["series"]
    ]
    return concat(frames, ["run", "step", *body["metrics"]])


def events_frame(items: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per event: run, id, kind (attempt, cancel, entrance, exit, return, divergence), step, details."""
    columns = ["run", "id", "kind", "step", "details", "created_at"]
    rows = [
        [e["run_id"], e["id"], e["kind"], e.get("step"), e.get("details") or {}, pd.Timestamp(e["created_at"])]
        for e in items
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["step"] = frame["step"].astype("Int64")  # an event may have no step
    return frame


def experiments_frame(items: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per experiment: experiment, name, owner, tags, swept (the sweep's paths), created_at."""
    columns = ["experiment", "name", "owner", "tags", "swept", "created_at"]
    rows = [
        [e["id"], e["name"], e["owner"], list(e.get("tags") or []), list(e.get("sweep") or {}), e["created_at"]]
        for e in items
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    return frame


def concat(frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)
