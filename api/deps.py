"""Dependencies, as Annotated aliases: settings, the session (the route's transaction) and the user.

The session dependency owns the transaction: it commits after the route returned and its
response was serialised, and rolls back when the route raised. It is function-scoped, so
the commit happens before the response is sent; work that must follow the commit (sending
runs to the broker) goes in a background task, which runs after the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from store import queries
from store.models import User

from .settings import ApiSettings

Enqueue = Callable[[Sequence[int]], None]

bearer = HTTPBearer(
    auto_error=False,
    description="an API token, sent as `Authorization: Bearer eos_...`: `eos users create NAME` creates a user and "
    "prints its first token, `eos token create NAME` (or `POST /api/v1/tokens`) another, once each. A revoked or "
    "expired token gets 401.",
)


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


async def get_enqueue(request: Request) -> Enqueue:
    enqueue: Enqueue = request.app.state.enqueue
    return enqueue


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
EnqueueDep = Annotated[Enqueue, Depends(get_enqueue)]


async def get_session(sessions: SessionsDep) -> AsyncIterator[Session]:
    # Opening a session does no I/O (it connects on first use, in the route's thread); the commit
    # and the close, which do, run together in one worker thread.
    session = sessions()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(_close, session, commit=False)
        raise
    await run_in_threadpool(_close, session, commit=True)


def _close(session: Session, *, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def get_current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    if credentials is None:
        raise unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    user = queries.user_for_token(session=session, token=credentials.credentials)
    if user is None:
        raise unauthorized("invalid, revoked or expired token")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_owner(user: User, owner_id: int, what: str) -> None:
    """403 unless `user` owns the object or is an admin."""
    if user.id != owner_id and not user.is_admin:
        detail = f"{what} belongs to another user; only its owner or an admin may change it"
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail)
