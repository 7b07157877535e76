"""GET /runs, GET /runs/{id}, its events, POST /runs/{id}/cancel and DELETE /runs/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from store import lifecycle, queries

from ..deps import CurrentUser, SessionDep, require_owner
from ..inputs import ExperimentIdQuery, RunId
from ..schemas import EventsPublic, Message, Responses, RunPublic, RunsPublic, RunStatus
from ..views import event_public, run_public, served_queues

router = APIRouter(prefix="/runs", tags=["runs"])

ERRORS: Responses = {401: {"model": Message}, 404: {"model": Message}}


@router.get("", responses=ERRORS)
def list_runs(
    request: Request,
    session: SessionDep,
    _user: CurrentUser,
    experiment_id: ExperimentIdQuery,
    status: Annotated[list[RunStatus] | None, Query(description="only runs in these statuses")] = None,
) -> RunsPublic:
    """The runs of one experiment, in creation order."""
    queries.get_experiment(session=session, experiment_id=experiment_id)  # 404 for an unknown experiment
    runs = queries.list_runs(session=session, experiment_id=experiment_id, status=status)
    served = served_queues(request, session)
    return RunsPublic(items=[run_public(r, served=served) for r in runs], total=len(runs))


@router.get("/{run_id}", responses=ERRORS)
def get_run(request: Request, run_id: RunId, session: SessionDep, _user: CurrentUser) -> RunPublic:
    """One run: status, progress, timings, its queue and whether a live worker serves it, and once
    finished its summary (or error)."""
    run = queries.get_run(session=session, run_id=run_id)
    return run_public(run, with_estimate=True, served=served_queues(request, session))


@router.get("/{run_id}/events", responses=ERRORS)
def list_events(run_id: RunId, session: SessionDep, _user: CurrentUser) -> EventsPublic:
    """The run's events in order: attempts, cancellation, regime changes (entrance, exit, return), divergence."""
    queries.get_run(session=session, run_id=run_id)
    events = queries.list_events(session=session, run_id=run_id)
    return EventsPublic(items=[event_public(e) for e in events], total=len(events))


@router.post(
    "/{run_id}/cancel",
    responses={**ERRORS, 403: {"model": Message}, 409: {"model": Message, "description": "already finished"}},
)
def cancel_run(run_id: RunId, session: SessionDep, user: CurrentUser) -> RunPublic:
    """Cancel a run (owner or admin): a queued run at once, a running one at its next trace flush."""
    run = queries.get_run(session=session, run_id=run_id, for_update=True)
    require_owner(user, queries.run_owner(session=session, run=run).id, f"run {run_id}")
    lifecycle.cancel(session=session, run=run)
    return run_public(run)


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ERRORS, 403: {"model": Message}, 409: {"model": Message, "description": "still running"}},
)
def delete_run(run_id: RunId, session: SessionDep, user: CurrentUser) -> None:
    """Delete a run with its events and trace (owner or admin). A running run must be cancelled first: 409."""
    run = queries.get_run(session=session, run_id=run_id, for_update=True)
    require_owner(user, queries.run_owner(session=session, run=run).id, f"run {run_id}")
    queries.delete_run(session=session, run=run)
