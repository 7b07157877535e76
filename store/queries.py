"""Reads and writes of users, experiments, runs and events.

Every function takes `session=` keyword-only and never commits: the caller (a route,
a task) owns the transaction. Plain ORM rows come out; the API maps them to schemas.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from eos_core.kappa import kappa_b
from eos_core.regimes import verdict_column
from eos_core.resources import Limits
from eos_core.spec import RunSpec
from eos_core.summary import RunSummary
from eos_core.sweep import Sweep, expand_sweep, spec_hash

from . import workers
from .errors import Conflict, NotFound, QuotaExceeded
from .lifecycle import ACTIVE, RunStatus
from .models import ApiToken, Event, Experiment, Run, User, as_utc, utcnow
from .traces import read_trace

# --- users and tokens -------------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InvalidUserName(ValueError):
    """A user name that is empty, too long or holds characters outside USER_NAME."""


class InvalidExpiry(ValueError):
    """A token expiry that is not in the future."""


# A letter or digit, then letters, digits, '.', '_' or '-': at most 64 characters in all.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
USER_NAME_RULE = "1 to 64 characters: letters, digits, '.', '_' and '-', starting with a letter or a digit"


def check_user_name(name: str) -> str:
    """`name` if it is a valid user name; raises InvalidUserName naming the rule otherwise."""
    if USER_NAME.fullmatch(name) is None:
        raise InvalidUserName(f"invalid user name {name!r}: {USER_NAME_RULE}")
    return name


def create_user(*, session: Session, name: str, is_admin: bool = False) -> tuple[User, str]:
    """A new user and their first API token; the secret is returned once and stored hashed."""
    check_user_name(name)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    session.flush()
    return user, issue_token(session=session, user=user)


def create_token(*, session: Session, user: User, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token of `user` (expiring at `expires_at`, or never) and its secret, returned once and stored hashed."""
    if expires_at is not None:
        expires_at = as_utc(expires_at)
        if expires_at <= utcnow():
            raise InvalidExpiry(f"the expiry {expires_at.isoformat()} is not in the future")
    secret = "eos_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=hash_token(secret), prefix=secret[:10], expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, secret


def issue_token(*, session: Session, user: User, expires_at: datetime | None = None) -> str:
    return create_token(session=session, user=user, expires_at=expires_at)[1]


def user_for_token(*, session: Session, token: str) -> User | None:
    """The user whose token this is, unless it is unknown, revoked or expired."""
    stmt = (
        select(User)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(
            ApiToken.token_hash == hash_token(token),
            ApiToken.revoked.is_(False),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > utcnow()),
        )
    )
    return session.scalar(stmt)


def token_expired(token: ApiToken, at: datetime | None = None) -> bool:
    return token.expires_at is not None and as_utc(token.expires_at) <= (at or utcnow())


def token_state(token: ApiToken) -> Literal["active", "revoked", "expired"]:
    return "revoked" if token.revoked else "expired" if token_expired(token) else "active"


def list_tokens(*, session: Session, user: User | None = None) -> list[ApiToken]:
    """The tokens of `user` (of everyone when None), oldest first, with their users loaded."""
    stmt = select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id)
    if user is not None:
        stmt = stmt.where(ApiToken.user_id == user.id)
    return list(session.scalars(stmt))


def get_token(*, session: Session, token_id: int) -> ApiToken:
    token = session.scalar(select(ApiToken).options(selectinload(ApiToken.user)).where(ApiToken.id == token_id))
    if token is None:
        raise NotFound(f"no token {token_id}")
    return token


def revoke_token(*, session: Session, token: ApiToken) -> ApiToken:
    """Revoke `token`: from now on it gets 401. Revoking a revoked token changes nothing."""
    token.revoked = True
    session.flush()
    return token


def rotate_token(*, session: Session, token: ApiToken, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Revoke `token` and create another for its user; the new secret is returned once."""
    if token.revoked:
        raise Conflict(f"token {token.id} ({token.prefix}...) is revoked already: create a new one instead")
    user = session.get_one(User, token.user_id)
    revoke_token(session=session, token=token)
    row, secret = create_token(session=session, user=user, expires_at=expires_at)
    return row, secret


def get_user(*, session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def local_user(*, session: Session) -> User:
    """The embedded store's single user, created on first use."""
    user = session.scalar(select(User).where(User.name == "local"))
    if user is None:
        user = User(name="local", is_admin=True)
        session.add(user)
        session.flush()
    return user


# --- experiments and runs ---------------------------------------------------------------


def queued_runs(*, session: Session, user: User) -> int:
    stmt = (
        select(func.count(Run.id))
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Experiment.owner_id == user.id, Run.status.in_(tuple(ACTIVE)))
    )
    return int(session.scalar(stmt) or 0)


def create_experiment(
    *,
    session: Session,
    owner: User,
    spec: dict[str, Any],
    sweep: Sweep | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    max_runs: int | None = None,
    max_queued: int | None = None,
    idempotency_key: str | None = None,
    limits: Limits | None = None,
) -> Experiment:
    """Validate the spec and sweep, expand the grid, and add the experiment with queued runs.

    `idempotency_key` is stored as given: a second experiment with the same key and owner fails
    the unique constraint at the flush (create_experiment_once turns that into the first one)."""
    cells = expand_sweep(spec, sweep, limit=max_runs)
    if limits is not None:  # TooCostly names the run, the limit and the estimate
        for params, cell in cells:
            limits.check(cell, f"run {params}" if params else "the run")
    if max_queued is not None and queued_runs(session=session, user=owner) + len(cells) > max_queued:
        raise QuotaExceeded(
            f"{owner.name} may have at most {max_queued} queued or running runs; this adds {len(cells)}"
        )
    base = RunSpec.model_validate(spec)
    experiment = Experiment(
        name=name or base.name,
        owner_id=owner.id,
        tags=list(tags),
        spec=spec,
        sweep=dict(sweep or {}),
        idempotency_key=idempotency_key,
    )
    session.add(experiment)
    session.flush()
    served = workers.served_queues(session=session)
    for params, cell in cells:
        session.add(
            Run(
                experiment_id=experiment.id,
                spec=cell.model_dump(mode="json"),
                spec_hash=spec_hash(cell),
                params=params,
                queue=workers.route(cell.device, served),
                steps=cell.optimizer.steps,
            )
        )
    session.flush()
    return experiment


class IdempotencyKeyReused(Conflict):
    """An Idempotency-Key sent again with a different request than the one that created its experiment."""

    def __init__(self, key: str, experiment: Experiment, differs: Sequence[str]) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for experiment {experiment.id} with a different "
            f"{', '.join(differs)}; send a new key for a new experiment, or the same request to get that one"
        )
        self.experiment_id = experiment.id


def experiment_for_key(
    *,
    session: Session,
    owner: User,
    key: str,
    spec: Mapping[str, Any],
    sweep: Sweep | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
) -> Experiment | None:
    """The owner's experiment created with Idempotency-Key `key`, or None.

    Keys are per owner. Raises IdempotencyKeyReused when that experiment was created from a
    different spec, sweep, name or tags than the ones given (compared as stored JSON; an omitted
    name stands for the spec's name, as in create_experiment).
    """
    stmt = select(Experiment).where(Experiment.owner_id == owner.id, Experiment.idempotency_key == key)
    experiment = session.scalar(stmt)
    if experiment is None:
        return None
    differs = []
    if experiment.spec != dict(spec):
        differs.append("spec")
    if (experiment.sweep or {}) != dict(sweep or {}):
        differs.append("sweep")
    if list(experiment.tags or []) != list(tags):
        differs.append("tags")
    if "spec" not in differs and experiment.name != (name or RunSpec.model_validate(spec).name):
        differs.append("name")
    if differs:
        raise IdempotencyKeyReused(key, experiment, differs)
    return experiment


def create_experiment_once(
    *,
    session: Session,
    owner: User,
    idempotency_key: str,
    spec: dict[str, Any],
    sweep: Sweep | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    max_runs: int | None = None,
    max_queued: int | None = None,
    limits: Limits | None = None,
) -> tuple[Experiment, bool]:
    """(experiment, created): the owner's experiment for `idempotency_key` if there is one (created
    False), else a new one as create_experiment makes it (created True).

    Two transactions racing with one key both miss it and both insert; the unique constraint on
    (owner, key) makes the second insert wait for the first transaction and fail once it commits.
    That insert ran in a savepoint, so only the savepoint is rolled back, and the loser returns the
    winner's experiment. IdempotencyKeyReused if the existing one came from a different request.
    """

    found = experiment_for_key(
        session=session, owner=owner, key=idempotency_key, spec=spec, sweep=sweep, name=name, tags=tags
    )
    if found is not None:
        return found, False
    return create_keyed_experiment(
        session=session,
        owner=owner,
        idempotency_key=idempotency_key,
        spec=spec,
        sweep=sweep,
        name=name,
        tags=tags,
        max_runs=max_runs,
        max_queued=max_queued,
        limits=limits,
    )


def create_keyed_experiment(
    *,
    session: Session,
    owner: User,
    idempotency_key: str,
    spec: dict[str, Any],
    sweep: Sweep | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    max_runs: int | None = None,
    max_queued: int | None = None,
    limits: Limits | None = None,
) -> tuple[Experiment, bool]:
    """create_experiment_once for a key just looked up and not found: (the new experiment, True), or,
    when a concurrent request with the key won the race, (its experiment, False)."""

    def existing() -> Experiment | None:
        return experiment_for_key(
            session=session, owner=owner, key=idempotency_key, spec=spec, sweep=sweep, name=name, tags=tags
        )

    try:
        with session.begin_nested():
            experiment = create_experiment(
                session=session,
                owner=owner,
                spec=spec,
                sweep=sweep,
                name=name,
                tags=tags,
                max_runs=max_runs,
                max_queued=max_queued,
                idempotency_key=idempotency_key,
                limits=limits,
            )
    except IntegrityError:
        found = existing()
        if found is None:
            raise  # another constraint failed
        return found, False
    return experiment, True


def get_experiment(*, session: Session, experiment_id: int, with_runs: bool = False) -> Experiment:
    stmt = select(Experiment).where(Experiment.id == experiment_id)
    if with_runs:
        stmt = stmt.options(selectinload(Experiment.runs))
    experiment = session.scalar(stmt)
    if experiment is None:
        raise NotFound(f"no experiment {experiment_id}")
    return experiment


def list_experiments(
    *,
    session: Session,
    owner: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Experiment], int]:
    """A page of experiments, newest first, and the total matching count."""
    stmt = select(Experiment)
    if owner is not None:
        stmt = stmt.join(User, User.id == Experiment.owner_id).where(User.name == owner)
    if name is not None:
        # `%` and `_` (and the escape character) match themselves, not as wildcards.
        stmt = stmt.where(Experiment.name.contains(name, autoescape=True))
    if status is not None:
        stmt = stmt.where(Experiment.runs.any(Run.status == status))
    stmt = stmt.options(selectinload(Experiment.owner)).order_by(Experiment.id.desc())
    if tag is not None:  # JSON containment differs across backends; filter the (short) tag lists here
        tagged = [e for e in session.scalars(stmt) if tag in (e.tags or [])]
        return tagged[offset : offset + limit], len(tagged)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    return list(session.scalars(stmt.limit(limit).offset(offset))), int(total)


def get_run(*, session: Session, run_id: int, for_update: bool = False) -> Run:
    stmt = select(Run).where(Run.id == run_id)
    if for_update:
        stmt = stmt.with_for_update()
    run = session.scalar(stmt)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


def list_runs(*, session: Session, experiment_id: int | None = None, status: Sequence[str] | None = None) -> list[Run]:
    stmt = select(Run).order_by(Run.id)
    if experiment_id is not None:
        stmt = stmt.where(Run.experiment_id == experiment_id)
    if status:
        stmt = stmt.where(Run.status.in_(tuple(status)))
    return list(session.scalars(stmt))


def run_owner(*, session: Session, run: Run) -> User:
    return session.scalars(
        select(User).join(Experiment, Experiment.owner_id == User.id).where(Experiment.id == run.experiment_id)
    ).one()


def delete_run(*, session: Session, run: Run) -> None:
    """Queued and finished runs go at once (events and trace cascade); running ones must be
    cancelled first, so a worker never writes into a row that is gone."""
    if run.status == RunStatus.RUNNING:
        raise Conflict(
            f"run {run.id} is running: cancel it first (POST /api/v1/runs/{run.id}/cancel), "
            "then delete it once it has stopped"
        )
    session.delete(run)
    session.flush()


def delete_experiment(*, session: Session, experiment: Experiment) -> None:
    """`experiment` must have its runs loaded (get_experiment(..., with_runs=True))."""
    running = [run.id for run in experiment.runs if run.status == RunStatus.RUNNING]
    if running:
        raise Conflict(
            f"experiment {experiment.id} has running runs {running}: cancel them first "
            "(POST /api/v1/runs/{id}/cancel), then delete it once they have stopped"
        )
    session.delete(experiment)
    session.flush()


# --- events -----------------------------------------------------------------------------


def add_event(*, session: Session, run_id: int, kind: str, step: int | None, details: dict[str, Any]) -> None:
    session.add(Event(run_id=run_id, kind=kind, step=step, details=details))


def list_events(*, session: Session, run_id: int, kinds: Sequence[str] | None = None) -> list[Event]:
    stmt = select(Event).where(Event.run_id == run_id).order_by(Event.id)
    if kinds:
        stmt = stmt.where(Event.kind.in_(tuple(kinds)))
    return list(session.scalars(stmt))


def delete_events(*, session: Session, run_id: int, kinds: Sequence[str]) -> None:
    for event in list_events(session=session, run_id=run_id, kinds=kinds):
        session.delete(event)


def summary_events(summary: RunSummary | Mapping[str, Any] | None) -> list[tuple[str, int, dict[str, Any]]]:
    """(kind, step, details) for the entrance, the exits and returns after it, and divergence.

    The definitions are RunSummary's (eos_core/regimes.py): steps, known to within the drift
    cadence (`resolution_steps`). Summaries stored before those definitions give no regime events.
    """
    s = RunSummary.from_stored(summary)
    if s is None:
        return []
    events: list[tuple[str, int, dict[str, Any]]] = []
    resolution = {"resolution_steps": s.drift_cadence_steps}
    if s.entrance_step is not None:
        events.append(("entrance", s.entrance_step, {"window_steps": s.window_steps, **resolution}))
    for step in s.exit_steps or []:
        events.append(("exit", step, resolution))
    for step in s.return_steps or []:
        events.append(("return", step, resolution))
    if s.diverged_step is not None:
        events.append(("divergence", s.diverged_step, {}))
    return sorted(events, key=lambda e: e[1])


# --- κ_B ----------------------------------------------------------------------------------


def kappa_by_batch_size(*, session: Session, experiment_id: int) -> list[dict[str, Any]]:
    """κ_B pooled over the analysed runs of an experiment that share a batch size, one entry per B.

    Each run contributes the (η·L, verdict) pairs of its stored trace (verdicts as the analysis
    reads them, eos_core.regimes.verdict_column); eos_core.kappa.kappa_b pools them. Entries:
    `batch_size`, `runs`, `run_ids` and kappa_b's fields, by increasing B.
    """
    groups: dict[int, tuple[list[int], list[np.ndarray], list[np.ndarray]]] = {}
    for run in list_runs(session=session, experiment_id=experiment_id):
        if run.summary is None:
            continue
        spec = RunSpec.model_validate(run.spec)
        trace = read_trace(session=session, run_id=run.id, metrics=["eta_loss", "stable", "stable_p"])
        if not len(trace["step"]):
            continue
        verdict, _ = verdict_column(trace["stable"], trace["stable_p"], spec.instrument.confidence)
        ids, eta_loss, verdicts = groups.setdefault(spec.optimizer.batch_size, ([], [], []))
        ids.append(run.id)
        eta_loss.append(trace["eta_loss"])
        verdicts.append(verdict)
    return [
        {"batch_size": b, "runs": len(ids), "run_ids": ids, **kappa_b(eta_loss, verdicts)}
        for b, (ids, eta_loss, verdicts) in sorted(groups.items())
    ]


def now() -> datetime:
    return utcnow()
