"""Store and science exceptions -> HTTP errors a client can act on.

Field errors follow FastAPI's own 422 shape, `{"detail": [{"type", "loc", "msg"}, ...]}`,
so a client handles a bad spec and a malformed body the same way. The rest are
`{"detail": "<message>"}` with the status that says what to do next.

A database that cannot be reached (a refused or dropped connection, an exhausted pool) is a
503 with `Retry-After`, on every route; any other unexpected failure is a JSON 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from eos_core.sweep import SweepError
from eos_core.trace import METRICS
from store.queries import Conflict, IdempotencyKeyReused, NotFound, QuotaExceeded
from store.traces import UnknownMetric

log = logging.getLogger(__name__)

FieldError = dict[str, Any]
# A full quota frees up only as runs finish: minutes, not seconds.
QUOTA_RETRY_AFTER_S = 60
IDEMPOTENCY_HEADER = "Idempotency-Key"


def unavailable(detail: str, retry_after: int) -> HTTPException:
    """A 503 that says when to come back."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(retry_after)})


def database_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached: the driver failed to connect or lost the connection
    (OperationalError, or any DBAPIError that invalidated its connection), or no pooled
    connection came free within the pool timeout."""
    if isinstance(exc, PoolTimeout):
        return True
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def spec_errors(exc: ValidationError, sweep: Mapping[str, Any] | None) -> RequestValidationError:
    """A RunSpec ValidationError located in the request body.

    A field that the sweep sets is reported under `sweep` (the bad value came from there),
    any other under `spec`.
    """
    errors = []
    for error in exc.errors(include_url=False):
        path = [str(p) for p in error["loc"]]
        swept = ".".join(path)
        loc = ["body", "sweep", swept] if sweep and swept in sweep else ["body", "spec", *path]
        errors.append(_field_error(error["type"], loc, error["msg"], error.get("ctx")))
    return RequestValidationError(errors)


def sweep_error(exc: SweepError, sweep: Mapping[str, Any] | None) -> RequestValidationError:
    """The sweep path named in the message (if any) becomes the last element of `loc`."""
    message = str(exc)
    named = [path for path in (sweep or {}) if repr(path) in message]
    loc = ["body", "sweep", *named[:1]]
    return RequestValidationError([_field_error("sweep_error", loc, message)])


def _field_error(kind: str, loc: list[str], msg: str, ctx: Mapping[str, Any] | None = None) -> FieldError:
    error: FieldError = {"type": kind, "loc": loc, "msg": msg}
    if ctx:
        error["ctx"] = {
            key: value if isinstance(value, int | float | str | list) else str(value) for key, value in ctx.items()
        }
    return error


async def _unknown_metric(_request: Request, exc: Exception) -> JSONResponse:
    """Metric names only come from the `metrics` query parameter; the message lists the valid names."""
    error = _field_error("unknown_metric", ["query", "metrics"], str(exc), {"valid": list(METRICS)})
    return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _idempotency_key_reused(_request: Request, exc: Exception) -> JSONResponse:
    """422, as the IETF Idempotency-Key draft says, in the field-error shape, located at the header."""
    error = _field_error("idempotency_key_reused", ["header", IDEMPOTENCY_HEADER], str(exc))
    return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _detail(code: int, headers: Mapping[str, str] | None = None) -> Any:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    return handler


def _database_error(retry_after: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            raise exc  # a bug, not an outage: the 500 below, with its traceback in the log
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, _first_line(exc))
        if isinstance(exc, PoolTimeout):
            detail = (
                "the server is busy: no database connection came free in time (EOS_DB_POOL_TIMEOUT); "
                f"retry in {retry_after} s"
            )
        else:
            kind = type(getattr(exc, "orig", None) or exc).__name__
            detail = f"the database is unavailable ({kind}); retry in {retry_after} s"
        return JSONResponse(
            {"detail": detail},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(retry_after)},
        )

    return handler


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    """Starlette's last resort (it still logs the traceback and re-raises): JSON, like every other error."""
    return JSONResponse({"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def install(app: FastAPI, retry_after: int) -> None:
    app.add_exception_handler(NotFound, _detail(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(Conflict, _detail(status.HTTP_409_CONFLICT))
    app.add_exception_handler(IdempotencyKeyReused, _idempotency_key_reused)
    app.add_exception_handler(
        QuotaExceeded, _detail(status.HTTP_429_TOO_MANY_REQUESTS, {"Retry-After": str(QUOTA_RETRY_AFTER_S)})
    )
    app.add_exception_handler(UnknownMetric, _unknown_metric)
    app.add_exception_handler(DBAPIError, _database_error(retry_after))
    app.add_exception_handler(PoolTimeout, _database_error(retry_after))
    app.add_exception_handler(Exception, _internal_error)
