"""/tokens: a user's own API tokens (an admin's: anyone's). Create (the secret shown once), list
(prefix, dates, state; never the secret, which is stored only as its sha256), revoke, rotate.

A revoked or expired token gets 401 on its next request (api/deps.py). The same operations on the
command line, against the database: `eos token create|list|revoke|rotate`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.orm import Session

from store import queries
from store.models import ApiToken, User, as_utc

from ..deps import CurrentUser, SessionDep
from ..inputs import id_path
from ..schemas import Message, Responses

router = APIRouter(prefix="/tokens", tags=["tokens"])
TokenId = Annotated[int, id_path("token")]
ERRORS: Responses = {401: {"model": Message}, 403: {"model": Message}, 404: {"model": Message}}
NAME_PATTERN = f"^{queries.USER_NAME.pattern}$"


def _future(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    value = as_utc(value)
    if value <= datetime.now(UTC):
        raise ValueError("the expiry must be in the future")
    return value


Expiry = Annotated[
    datetime | None,
    AfterValidator(_future),
    Field(description="when the token stops working (ISO 8601, UTC unless it says); null: never"),
]


class TokenCreate(BaseModel):
    user: str | None = Field(
        None, pattern=NAME_PATTERN, description="whose token (admins only; default: the caller's own)"
    )
    expires_at: Expiry = None


class TokenRotate(BaseModel):
    expires_at: Expiry = None


class TokenPublic(BaseModel):
    id: int
    user: str
    prefix: str = Field(description="the secret's first characters, to recognise it; never the secret")
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    state: Literal["active", "revoked", "expired"]


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown this once, stored only hashed")


class TokensPublic(BaseModel):
    items: list[TokenPublic]


def public(token: ApiToken, user: str) -> TokenPublic:
    return TokenPublic(
        id=token.id,
        user=user,
        prefix=token.prefix,
        created_at=as_utc(token.created_at),
        expires_at=None if token.expires_at is None else as_utc(token.expires_at),
        revoked=token.revoked,
        state=queries.token_state(token),
    )


def created(token: ApiToken, user: str, secret: str) -> TokenCreated:
    return TokenCreated(**public(token, user).model_dump(), token=secret)


def _owned(session: Session, token_id: int, user: User) -> ApiToken:
    """The token, if `user` owns it or is an admin; another user's token is a 404 to a non-admin."""
    token = queries.get_token(session=session, token_id=token_id)
    if token.user_id != user.id and not user.is_admin:
        raise queries.NotFound(f"no token {token_id}")
    return token


def _refuse_past(exc: queries.InvalidExpiry) -> RequestValidationError:
    """The expiry passed while the request was served: the 422 the body's validation would have given."""
    return RequestValidationError([{"type": "value_error", "loc": ["body", "expires_at"], "msg": str(exc)}])


def _forbidden() -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may see or create another user's tokens")


@router.post("", status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_token(body: TokenCreate, session: SessionDep, user: CurrentUser) -> TokenCreated:
    """Create a token for yourself (an admin: for any user). The response holds the secret, once."""
    owner = user
    if body.user is not None and body.user != user.name:
        if not user.is_admin:
            raise _forbidden()
        owner = queries.get_user(session=session, name=body.user)
    try:
        token, secret = queries.create_token(session=session, user=owner, expires_at=body.expires_at)
    except queries.InvalidExpiry as exc:
        raise _refuse_past(exc) from None
    return created(token, owner.name, secret)


@router.get("", responses=ERRORS)
def list_tokens(
    session: SessionDep,
    user: CurrentUser,
    owner: Annotated[
        str | None,
        Query(alias="user", pattern=NAME_PATTERN, description="whose tokens (admins: anyone's, or all when omitted)"),
    ] = None,
) -> TokensPublic:
    """Your tokens (an admin: everyone's, or one user's), oldest first: prefix, dates and state, never the secret."""
    if owner is not None and owner != user.name:
        if not user.is_admin:
            raise _forbidden()
        rows = queries.list_tokens(session=session, user=queries.get_user(session=session, name=owner))
    elif owner is None and user.is_admin:
        rows = queries.list_tokens(session=session)
    else:
        rows = queries.list_tokens(session=session, user=user)
    return TokensPublic(items=[public(t, t.user.name) for t in rows])


@router.post("/{token_id}/revoke", responses=ERRORS)
def revoke_token(token_id: TokenId, session: SessionDep, user: CurrentUser) -> TokenPublic:
    """Revoke a token: every later request with it gets 401. Revoking a revoked token changes nothing."""
    token = queries.revoke_token(session=session, token=_owned(session, token_id, user))
    return public(token, token.user.name)


@router.post(
    "/{token_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 409: {"model": Message}},
)
def rotate_token(
    token_id: TokenId, session: SessionDep, user: CurrentUser, body: TokenRotate | None = None
) -> TokenCreated:
    """Revoke a token and create another for its user (with `expires_at`, or none); the new secret is shown once."""
    old = _owned(session, token_id, user)
    try:
        token, secret = queries.rotate_token(
            session=session, token=old, expires_at=body.expires_at if body is not None else None
        )
    except queries.InvalidExpiry as exc:
        raise _refuse_past(exc) from None
    return created(token, old.user.name, secret)
