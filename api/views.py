"""ORM rows -> response schemas, and numpy columns -> strict-JSON lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import numpy as np
from fastapi import Request
from sqlalchemy.orm import Session

from eos_core.resources import estimate
from eos_core.spec import RunSpec
from eos_core.summary import RunSummary
from store import workers
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


def served_queues(request: Request, session: Session) -> set[str] | None:
    """The queues live workers serve, when this app sends runs to workers (None: the embedded
    store, which trains runs itself, so queues do not apply)."""
    return workers.served_queues(session=session) if request.app.state.broker is not None else None


def run_public(run: Run, with_estimate: bool = False, served: set[str] | None = None) -> RunPublic:
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
        queue_served=None if served is None else run.queue in served,
    )


def experiment_public(
    session: Session, experiment: Experiment, runs: Iterable[Run] | None = None, served: set[str] | None = None
) -> ExperimentPublic:
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
        runs=None if runs is None else [run_public(r, with_estimate=True, served=served) for r in runs],
        warnings=[] if runs is None or served is None else unserved_warnings(list(runs), served),
    )


def unserved_warnings(runs: list[Run], served: set[str]) -> list[str]:
    """One line per queue that holds queued runs of these and that no live worker serves."""
    waiting: dict[str, list[int]] = {}
    for run in runs:
        if run.status == "queued" and run.queue not in served:
            waiting.setdefault(run.queue, []).append(run.id)
    return [
        f"no live worker serves the {queue} queue: runs {', '.join(map(str, ids))} wait until one starts "
        f"(eos worker --queue {queue})"
        for queue, ids in sorted(waiting.items())
    ]


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
