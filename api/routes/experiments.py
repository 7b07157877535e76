"""POST and GET /experiments, GET and DELETE /experiments/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, status
from pydantic import ValidationError

from eos_core.sweep import SweepError
from store import queries
from store.models import Experiment, User

from ..deps import CurrentUser, EnqueueDep, SessionDep, SettingsDep, require_owner
from ..errors import spec_errors, sweep_error
from ..schemas import (
    ExperimentCreate,
    ExperimentPublic,
    ExperimentsPublic,
    KappaPublic,
    KappasPublic,
    Message,
    Responses,
    RunStatus,
)
from ..settings import ApiSettings
from ..views import experiment_public

router = APIRouter(prefix="/experiments", tags=["experiments"])

ERRORS: Responses = {401: {"model": Message}, 404: {"model": Message}}


def _create(session: SessionDep, user: User, body: ExperimentCreate, settings: ApiSettings) -> Experiment:
    quota = user.max_queued_runs if user.max_queued_runs is not None else settings.max_queued_runs_per_user
    try:
        return queries.create_experiment(
            session=session,
            owner=user,
            spec=body.spec,
            sweep=body.sweep,
            name=body.name,
            tags=body.tags,
            max_runs=settings.max_runs_per_sweep,
            max_queued=quota,
        )
    except ValidationError as exc:
        raise spec_errors(exc, body.sweep) from exc
    except SweepError as exc:
        raise sweep_error(exc, body.sweep) from exc


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 413: {"model": Message}, 429: {"model": Message, "description": "queued-run quota"}},
)
def create_experiment(
    body: ExperimentCreate,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    background: BackgroundTasks,
) -> ExperimentPublic:
    """Create an experiment: one run for a spec, or one per cell of `sweep` (a grid over dotted paths).

    The runs are queued; they are sent to the workers after this transaction has committed.
    """
    experiment = _create(session, user, body, settings)
    runs = queries.list_runs(session=session, experiment_id=experiment.id)
    background.add_task(enqueue, [run.id for run in runs])  # background tasks run after the commit
    return experiment_public(session, experiment, runs)


@router.get("", responses=ERRORS)
def list_experiments(
    session: SessionDep,
    _user: CurrentUser,
    owner: Annotated[str | None, Query(description="owner's user name")] = None,
    status: Annotated[RunStatus | None, Query(description="has at least one run in this status")] = None,
    tag: Annotated[str | None, Query(description="carries this tag")] = None,
    name: Annotated[str | None, Query(description="name contains this")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ExperimentsPublic:
    """Experiments, newest first; any authenticated user may read all of them."""
    items, total = queries.list_experiments(
        session=session, owner=owner, status=status, tag=tag, name=name, limit=limit, offset=offset
    )
    return ExperimentsPublic(
        items=[experiment_public(session, e) for e in items], total=total, limit=limit, offset=offset
    )


@router.get("/{experiment_id}", responses=ERRORS)
def get_experiment(experiment_id: int, session: SessionDep, _user: CurrentUser) -> ExperimentPublic:
    """One experiment with its runs."""
    experiment = queries.get_experiment(session=session, experiment_id=experiment_id)
    runs = queries.list_runs(session=session, experiment_id=experiment.id)
    return experiment_public(session, experiment, runs)


@router.get("/{experiment_id}/kappa", responses=ERRORS)
def get_kappa(experiment_id: int, session: SessionDep, _user: CurrentUser) -> KappasPublic:
    """κ_B per batch size, pooled over the experiment's analysed runs from their stored traces."""
    experiment = queries.get_experiment(session=session, experiment_id=experiment_id)
    items = queries.kappa_by_batch_size(session=session, experiment_id=experiment.id)
    return KappasPublic(experiment_id=experiment.id, items=[KappaPublic.model_validate(i) for i in items])


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ERRORS, 403: {"model": Message}, 409: {"model": Message, "description": "has running runs"}},
)
def delete_experiment(experiment_id: int, session: SessionDep, user: CurrentUser) -> None:
    """Delete an experiment, its runs, events and traces (owner or admin). Running runs must be cancelled first."""
    experiment = queries.get_experiment(session=session, experiment_id=experiment_id, with_runs=True)
    require_owner(user, experiment.owner_id, f"experiment {experiment_id}")
    queries.delete_experiment(session=session, experiment=experiment)
