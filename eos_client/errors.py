"""What can go wrong talking to eos, as exceptions that say what happened and what to do.

Every HTTP error becomes an `EosError` carrying the status and the server's `detail`; the
class says what kind of problem it is, and `exit_code` is what the `eos` command exits with:

    0 ok | 1 the thing asked about failed (failed runs, a conflict, a quota) | 2 bad input (422)
    3 not found (404) | 4 bad or missing token (401/403) | 5 server unreachable or failing (5xx)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

FieldError = dict[str, Any]
LOCATIONS = ("body", "query", "path", "header")


class EosError(Exception):
    """Base class: `status` is the HTTP status (None for errors raised before any request), `detail` the
    server's `detail` (a string, or FastAPI's list of field errors)."""

    exit_code = 1

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail


class InputError(EosError):
    """Bad input: an unreadable spec file, a malformed sweep, a request too large."""

    exit_code = 2


class ValidationFailed(InputError):
    """422: `fields` lists the dotted path of every rejected field (`optimizer.lr`, `sweep optimizer.lr`)."""

    def __init__(self, message: str, *, status: int | None = 422, detail: Any = None) -> None:
        super().__init__(message, status=status, detail=detail)
        self.fields = [field_path(e.get("loc", ())) for e in detail] if isinstance(detail, list) else []


class NotFound(EosError):
    """404: no such experiment or run."""

    exit_code = 3


class Conflict(EosError):
    """409: the request conflicts with the object's state (cancelling a finished run, deleting a running one)."""


class QuotaExceeded(EosError):
    """429: too many queued or running runs for this user."""


class AuthError(EosError):
    """401 (bad or missing token) or 403 (the object belongs to another user)."""

    exit_code = 4


class ServerUnreachable(EosError):
    """No HTTP answer at all: connection refused, unknown host, timeout. The message names the URL."""

    exit_code = 5


class ServerError(EosError):
    """5xx: the server failed while answering."""

    exit_code = 5


class WaitTimeout(EosError):
    """`wait(timeout=...)` ran out before every run finished."""


def field_path(loc: Sequence[Any]) -> str:
    """FastAPI's `loc` as a dotted spec path: ["body", "spec", "optimizer", "lr"] -> "optimizer.lr"."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in LOCATIONS:
        parts = parts[1:]
    if parts and parts[0] == "spec":
        parts = parts[1:]
    if parts and parts[0] == "sweep" and len(parts) > 1:
        return "sweep " + ".".join(parts[1:])
    return ".".join(parts) or "(request)"


def describe_fields(detail: Any) -> str:
    """'optimizer.lr: ... positive ...; dataset.classes: ...' from a 422 detail (or the detail itself)."""
    if not isinstance(detail, list):
        return str(detail)
    return "; ".join(f"{field_path(e.get('loc', ()))}: {e.get('msg', e)}" for e in detail if isinstance(e, dict))


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def error_for(response: httpx.Response) -> EosError:
    """The exception for an HTTP error response."""
    status, detail = response.status_code, _detail(response)
    what = f"{response.request.method} {response.request.url.path}"
    if status == 422:
        return ValidationFailed(f"invalid input: {describe_fields(detail)}", detail=detail)
    if status == 401:
        message = f"bad or missing token: set EOS_TOKEN or pass token= (the server said: {detail})"
        return AuthError(message, status=status, detail=detail)
    if status == 403:
        return AuthError(f"not allowed: {detail}", status=status, detail=detail)
    kinds: dict[int, type[EosError]] = {404: NotFound, 409: Conflict, 413: InputError, 429: QuotaExceeded}
    if status in kinds:
        return kinds[status](str(detail), status=status, detail=detail)
    if status >= 500:
        return ServerError(f"the server failed on {what} ({status}): {detail}", status=status, detail=detail)
    return EosError(f"{what} answered {status}: {detail}", status=status, detail=detail)


def unreachable(exc: httpx.TransportError, url: str) -> ServerUnreachable:
    """A transport failure (no HTTP answer) as an error naming the server's URL."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({type(exc).__name__})"
    hint = "is `eos serve` running there, and is EOS_URL right?"
    return ServerUnreachable(f"cannot reach the eos server at {url}: {reason}; {hint}", detail=reason)
