"""POST and GET /experiments, GET and DELETE /experiments/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from eos_core.resources import TooCostly
from eos_core.sweep import SweepError
from store import queries
from store.models import Experiment, User

from ..broker import BrokerCheck
from ..deps import CurrentUser, EnqueueDep, SessionDep, SettingsDep, require_owner
from ..errors import IDEMPOTENCY_HEADER, spec_errors, sweep_error, unavailable
from ..inputs import ExperimentId, Offset, Text, json_errors
from ..schemas import (
    MAX_NAME_LENGTH,
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
from ..views import experiment_public, served_queues

router = APIRouter(prefix="/experiments", tags=["experiments"])

ERRORS: Responses = {401: {"model": Message}, 404: {"model": Message}}
MAX_KEY_LENGTH = 200  # experiments.idempotency_key is a String(200)
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    Text | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description=(
            "a key of the client's choice (a UUID, say), unique per submission; 1 to 200 characters. Sending "
            "the same request again with the same key returns the experiment it created (200, header "
            "`Idempotent-Replayed: true`) and creates nothing; the same key with a different spec, sweep, "
            "name or tags is a 422. Keys are per user."
        ),
        examples=["3f2b6c0e-7d1a-4f5e-9a43-2f1c0d9e8b71"],
    ),
]


def _create(
    session: SessionDep, user: User, body: ExperimentCreate, settings: ApiSettings, key: str | None
) -> tuple[Experiment, bool]:
    """(experiment, created): a new experiment, or the one an earlier request with `key` created."""
    quota = user.max_queued_runs if user.max_queued_runs is not None else settings.max_queued_runs_per_user
    try:
        if key is not None:
            return queries.create_keyed_experiment(  # the route looked the key up already
                session=session,
                owner=user,
                idempotency_key=key,
                spec=body.spec,
                sweep=body.sweep,
                name=body.name,
                tags=body.tags,
                max_runs=settings.max_runs_per_sweep,
                max_queued=quota,
                limits=settings.run_limits,
            )
        experiment = queries.create_experiment(
            session=session,
            owner=user,
            spec=body.spec,
            sweep=body.sweep,
            name=body.name,
            tags=body.tags,
            max_runs=settings.max_runs_per_sweep,
            max_queued=quota,
            limits=settings.run_limits,
        )
        return experiment, True
    except ValidationError as exc:
        raise spec_errors(exc, body.sweep) from exc
    except SweepError as exc:
        raise sweep_error(exc, body.sweep) from exc
    except TooCostly as exc:
        raise RequestValidationError([{"type": "too_costly", "loc": ["body", "spec"], "msg": str(exc)}]) from exc


def storable(body: ExperimentCreate) -> None:
    """422 for a spec or sweep the database cannot store (api/inputs.py), or a default name too long for it."""
    errors = json_errors(body.spec, ["body", "spec"]) + json_errors(body.sweep, ["body", "sweep"])
    default_name = body.spec.get("name")
    if body.name is None and isinstance(default_name, str) and len(default_name) > MAX_NAME_LENGTH:
        message = (
            f"the experiment's name defaults to spec.name, which has {len(default_name)} characters; "
            f"the limit is {MAX_NAME_LENGTH}: give a shorter `name`"
        )
        errors.append({"type": "string_too_long", "loc": ["body", "spec", "name"], "msg": message})
    if errors:
        raise RequestValidationError(errors)


def _replayed(session: SessionDep, experiment: Experiment, response: Response) -> ExperimentPublic:
    response.status_code = status.HTTP_200_OK
    response.headers[REPLAYED_HEADER] = "true"
    return experiment_public(session, experiment, queries.list_runs(session=session, experiment_id=experiment.id))


def _require_broker(request: Request, retry_after: int) -> None:
    """503 before anything is created while the broker is unreachable (when this app sends to one)."""
    broker: BrokerCheck | None = request.app.state.broker
    error = broker.error() if broker is not None else None
    if error is not None:
        raise unavailable(
            f"the broker is unreachable, so runs could not be sent to the workers; nothing was created; "
            f"retry in {retry_after} s ({error})",
            retry_after,
        )


UNAVAILABLE = {
    "model": Message,
    "description": "too many requests in progress, or the database or the broker is unreachable: nothing was "
    "created; retry after `Retry-After` seconds",
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        200: {
            "model": ExperimentPublic,
            "description": "a replay: the experiment an earlier request with this `Idempotency-Key` created "
            "(in its current state); nothing new was created. Header `Idempotent-Replayed: true`.",
        },
        201: {"description": "created; its runs are queued and sent to the workers"},
        413: {"model": Message},
        422: {
            "description": "an invalid spec, sweep or body, or an `Idempotency-Key` that is empty, over 200 "
            "characters, or was used for a different request"
        },
        429: {"model": Message, "description": "queued-run quota (with `Retry-After`)"},
        503: UNAVAILABLE,
    },
)
def create_experiment(
    body: ExperimentCreate,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    background: BackgroundTasks,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ExperimentPublic:
    """Create an experiment: one run for a spec, or one per cell of `sweep` (a grid over dotted paths).

    The runs are queued; they are sent to the workers after this transaction has committed. While the
    broker is unreachable nothing is created (503). With an `Idempotency-Key`, a retried request returns
    the experiment the first one created (200) instead of creating another.
    """
    storable(body)
    if idempotency_key is not None:
        found = queries.experiment_for_key(
            session=session,
            owner=user,
            key=idempotency_key,
            spec=body.spec,
            sweep=body.sweep,
            name=body.name,
            tags=body.tags,
        )
        if found is not None:  # a replay creates and sends nothing, so it needs no broker
            return _replayed(session, found, response)
    _require_broker(request, settings.retry_after_seconds)
    experiment, created = _create(session, user, body, settings, idempotency_key)
    if not created:  # a concurrent request with the same key won the race
        return _replayed(session, experiment, response)
    runs = queries.list_runs(session=session, experiment_id=experiment.id)
    background.add_task(enqueue, [run.id for run in runs])  # background tasks run after the commit
    return experiment_public(session, experiment, runs, served_queues(request, session))


@router.get("", responses=ERRORS)
def list_experiments(
    session: SessionDep,
    _user: CurrentUser,
    owner: Annotated[Text | None, Query(description="owner's user name")] = None,
    status: Annotated[RunStatus | None, Query(description="has at least one run in this status")] = None,
    tag: Annotated[Text | None, Query(description="carries this tag")] = None,
    name: Annotated[Text | None, Query(description="name contains this")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="experiments per page (1 to 500)")] = 50,
    offset: Offset = 0,
) -> ExperimentsPublic:
    """Experiments, newest first; any authenticated user may read all of them."""
    items, total = queries.list_experiments(
        session=session, owner=owner, status=status, tag=tag, name=name, limit=limit, offset=offset
    )
    return ExperimentsPublic(
        items=[experiment_public(session, e) for e in items], total=total, limit=limit, offset=offset
    )


@router.get("/{experiment_id}", responses=ERRORS)
def get_experiment(
    request: Request, experiment_id: ExperimentId, session: SessionDep, _user: CurrentUser
) -> ExperimentPublic:
    """One experiment with its runs (with `warnings` when some wait on a queue no live worker serves)."""
    experiment = queries.get_experiment(session=session, experiment_id=experiment_id)
    runs = queries.list_runs(session=session, experiment_id=experiment.id)
    return experiment_public(session, experiment, runs, served_queues(request, session))


@router.get("/{experiment_id}/kappa", responses=ERRORS)
def get_kappa(experiment_id: ExperimentId, session: SessionDep, _user: CurrentUser) -> KappasPublic:
    """κ_B per batch size, pooled over the experiment's analysed runs from their stored traces."""
    experiment = queries.get_experiment(session=session, experiment_id=experiment_id)
    items = queries.kappa_by_batch_size(session=session, experiment_id=experiment.id)
    return KappasPublic(experiment_id=experiment.id, items=[KappaPublic.model_validate(i) for i in items])


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ERRORS, 403: {"model": Message}, 409: {"model": Message, "description": "has running runs"}},
)
def delete_experiment(experiment_id: ExperimentId, session: SessionDep, user: CurrentUser) -> None:
    """Delete an experiment, its runs, events and traces (owner or admin). Running runs must be cancelled first."""
    experiment = queries.get_experiment(session=session, experiment_id=experiment_id, with_runs=True)
    require_owner(user, experiment.owner_id, f"experiment {experiment_id}")
    queries.delete_experiment(session=session, experiment=experiment)
