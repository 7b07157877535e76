"""Plain objects for what the API returns: experiments and runs (the JSON of RunPublic / ExperimentPublic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from eos_core.summary import RunSummary

FINISHED = frozenset({"completed", "diverged", "failed", "cancelled"})


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
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def label(self) -> str:
        """'lr=10, batch_size=8' from the swept parameters (the run id when nothing was swept)."""
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.params.items()) or f"run {self.id}"

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
        )


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: `runs` has one row per run (params, status, summary fields); `series` is a long
    frame (run, step, one column per metric) on one step grid common to all the runs."""

    runs: pd.DataFrame
    series: pd.DataFrame
