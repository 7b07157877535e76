"""ORM rows -> response schemas, and numpy columns -> strict-JSON lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import numpy as np
from sqlalchemy.orm import Session

from eos_core.resources import estimate
from eos_core.spec import RunSpec
from eos_core.summary import RunSummary
from store.models import Event, Experiment, Run, User

from .schemas import (
    Column,
    CompareRun,
    EventPublic,
    ExperimentPublic,
    RunEstimate,
    RunPublic,
    RunStatus,
    RunTimings,
)


def run_estimate(run: Run) -> RunEstimate | None:
    try:
        cost = estimate(RunSpec.model_validate(run.spec))
    except ValueError:  # a spec stored before a bound was added: no estimate rather than an error
        return None
    return RunEstimate(memory_gib=round(cost.memory_gib, 4), tflop=cost.flops / 1e12, parameters=cost.parameters)


def run_public(run: Run, with_estimate: bool = False) -> RunPublic:
    timings = RunTimings(
        created_at=run.created_at,
        enqueued_at=run.enqueued_at,
        started_at=run.started_at,
        heartbeat_at=run.heartbeat_at,
        finished_at=run.finished_at,
    )
    return RunPublic(
        id=run.id,
        experiment_id=run.experiment_id,
        name=str(run.spec.get("name", "")),
        params=run.params or {},
        status=cast(RunStatus, run.status),
        queue=run.queue,
        progress=run.progress,
        step=run.step,
        steps=run.steps,
        attempts=run.attempts,
        worker=run.worker,
        cancel_requested=run.cancel_requested,
        spec=run.spec,
        timings=timings,
        summary=RunSummary.from_stored(run.summary),
        dataset_info=run.dataset_info,
        error=run.error,
        created_at=run.created_at,
        estimate=run_estimate(run) if with_estimate else None,
    )


def experiment_public(session: Session, experiment: Experiment, runs: Iterable[Run] | None = None) -> ExperimentPublic:
    # session.get hits the identity map first: one lookup per distinct owner on a page.
    owner = session.get(User, experiment.owner_id)
    return ExperimentPublic(
        id=experiment.id,
        name=experiment.name,
        owner=owner.name if owner is not None else "",
        tags=list(experiment.tags or []),
        spec=experiment.spec,
        sweep=experiment.sweep or {},
        created_at=experiment.created_at,
        runs=None if runs is None else [run_public(r, with_estimate=True) for r in runs],
    )


def event_public(event: Event) -> EventPublic:
    return EventPublic.model_validate(event)


def compare_run(run: Run) -> CompareRun:
    return CompareRun(
        id=run.id,
        experiment_id=run.experiment_id,
        name=str(run.spec.get("name", "")),
        status=run.status,
        params=run.params or {},
        summary=RunSummary.from_stored(run.summary),
    )


def json_column(values: np.ndarray) -> Column:
    """Floats as a list, with NaN and +-inf as None (JSON has neither)."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    if finite.all():
        plain: Column = array.tolist()
        return plain
    boxed = array.astype(object)
    boxed[~finite] = None
    mixed: Column = boxed.tolist()
    return mixed


def json_columns(columns: Mapping[str, np.ndarray]) -> dict[str, Column]:
    return {name: json_column(values) for name, values in columns.items()}
