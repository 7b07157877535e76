"""Plain objects for what the API returns: experiments and runs (the JSON of RunPublic / ExperimentPublic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from eos_core.summary import RunSummary

FINISHED = frozenset({"completed", "diverged", "failed", "cancelled"})


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Swept params with a swept sub-object's keys as dotted paths: {"optimizer": {"lr": 1}} -> {"optimizer.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, path + "."))
        else:
            out[path] = value
    return out


def params_label(params: dict[str, Any]) -> str:
    """'lr=10, batch_size=8': each swept field by its last name (the leaves of a swept sub-object too)."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in flat_params(params).items())


def failure_text(status: str, step: int, steps: int, error: str | None, diverged_step: int | None = None) -> str | None:
    """'failed at step 12 of 200: ValueError: ...' for a failed run (or a finished one with an error),
    'diverged at step N (...)' for a diverged one, else None. Shared by `Run.failure` and `eos run`."""
    if status == "failed" or (error and status in FINISHED):
        where = f"at step {step} of {steps}" if steps else f"at step {step}"
        return f"{status} {where}: {error or 'no error recorded'}"
    if status == "diverged":
        at = diverged_step if diverged_step is not None else step
        return f"diverged at step {at} (the iterate or its loss is no longer finite)"
    return None


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class Run:
    """One run: a cell of an experiment's sweep. `params` maps dotted spec paths to this cell's values."""

    id: int
    experiment_id: int
    name: str
    status: str  # queued | running | completed | diverged | failed | cancelled
    params: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    steps: int = 0
    progress: float = 0.0  # 0..1, updated at each heartbeat
    summary: RunSummary | None = None  # the analysis of the finished trace (fields described in eos_core.summary)
    error: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # the expanded, validated spec
    queue: str = "cpu"
    queue_served: bool | None = None  # a live worker serves the queue (None: the embedded store)
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def failure(self) -> str | None:
        """Why the run did not complete: 'failed at step 12 of 200: ValueError: ...' (the error's type and
        message as the worker recorded them, and the step it reached); 'diverged at step N (...)' for a
        diverged run. None for a run that completed, or has not finished."""
        diverged_step = self.summary.diverged_step if self.summary is not None else None
        return failure_text(self.status, self.step, self.steps, self.error, diverged_step)

    def __str__(self) -> str:
        """'run 3 (lr=10): failed at step 12 of 200: ValueError: ...', or 'run 3 (lr=10): running, 120/200'."""
        head = f"run {self.id} ({self.label})" if self.params else f"run {self.id}"
        return f"{head}: {self.failure or f'{self.status}, {self.step}/{self.steps} steps'}"

    @property
    def label(self) -> str:
        """'lr=10, batch_size=8' from the swept parameters (the run id when nothing was swept)."""
        return params_label(self.params) or f"run {self.id}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        timings = data.get("timings") or {}
        return cls(
            id=int(data["id"]),
            experiment_id=int(data["experiment_id"]),
            name=str(data.get("name", "")),
            status=str(data["status"]),
            params=dict(data.get("params") or {}),
            step=int(data.get("step") or 0),
            steps=int(data.get("steps") or 0),
            progress=float(data.get("progress") or 0.0),
            summary=RunSummary.from_stored(data.get("summary")),
            error=data.get("error"),
            spec=dict(data.get("spec") or {}),
            queue=str(data.get("queue", "cpu")),
            queue_served=data.get("queue_served"),
            attempts=int(data.get("attempts") or 0),
            created_at=_time(data.get("created_at")),
            started_at=_time(timings.get("started_at")),
            finished_at=_time(timings.get("finished_at")),
        )


@dataclass(frozen=True)
class Experiment:
    """A spec and its sweep; `runs` is filled when the experiment was read one at a time (or just created)."""

    id: int
    name: str
    owner: str
    tags: list[str]
    spec: dict[str, Any]
    sweep: dict[str, Any]
    created_at: datetime | None
    runs: list[Run] | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. runs waiting on a queue no live worker serves

    @property
    def run_ids(self) -> list[int]:
        return [r.id for r in self.runs or []]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Experiment:
        runs = data.get("runs")
        return cls(
            id=int(data["id"]),
            name=str(data.get("name", "")),
            owner=str(data.get("owner", "")),
            tags=list(data.get("tags") or []),
            spec=dict(data.get("spec") or {}),
            sweep=dict(data.get("sweep") or {}),
            created_at=_time(data.get("created_at")),
            runs=None if runs is None else [Run.from_json(r) for r in runs],
            warnings=[str(w) for w in data.get("warnings") or []],
        )


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: `runs` has one row per run (params, status, summary fields); `series` is a long
    frame (run, step, one column per metric) on one step grid common to all the runs."""

    runs: pd.DataFrame
    series: pd.DataFrame
