"""Store and science exceptions -> HTTP errors a client can act on.

Field errors follow FastAPI's own 422 shape, `{"detail": [{"type", "loc", "msg"}, ...]}`,
so a client handles a bad spec and a malformed body the same way. The rest are
`{"detail": "<message>"}` with the status that says what to do next.

A body that cannot be parsed as JSON (not UTF-8, nested too deeply) is a 422 like malformed
JSON, never FastAPI's undocumented 400. A 405 names in `Allow` every method the path serves
(Starlette names those of the first route that matched the path only). Error responses quote
the input they refuse, so lone surrogates in it are escaped (`api.inputs.printable`).

A database that cannot be reached (a refused or dropped connection, an exhausted pool) is a
503 with `Retry-After`, on every route; any other unexpected failure is a JSON 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from eos_core.sweep import SweepError
from eos_core.trace import METRICS
from store.db import database_unreachable
from store.queries import Conflict, IdempotencyKeyReused, NotFound, QuotaExceeded
from store.traces import UnknownMetric

from .inputs import printable

log = logging.getLogger(__name__)

FieldError = dict[str, Any]
# A full quota frees up only as runs finish: minutes, not seconds.
QUOTA_RETRY_AFTER_S = 60
IDEMPOTENCY_HEADER = "Idempotency-Key"


def unavailable(detail: str, retry_after: int) -> HTTPException:
    """A 503 that says when to come back."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(retry_after)})


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


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with the quoted input made encodable (a lone surrogate would make the response a 500)."""
    assert isinstance(exc, RequestValidationError)
    errors = printable(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


# The methods a 405 looks for; a route serves at most these.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path: the router is asked, one method at a time."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = ", ".join(allowed_methods(request)) or (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers={"Allow": allowed})
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.__cause__ is not None:
        # FastAPI's "There was an error parsing the body": the bytes are not UTF-8, or the JSON is
        # nested too deeply for the parser. Malformed JSON is a 422 (json_invalid); so is this.
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            reason = f"the body is not UTF-8: {cause.reason} (byte {cause.start})"
        elif isinstance(cause, RecursionError):
            reason = "the body's JSON is nested too deeply"
        else:
            reason = f"the body cannot be parsed as JSON: {type(cause).__name__}"
        error = _field_error("json_invalid", ["body"], reason)
        return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    return await http_exception_handler(request, exc)


def _detail(code: int, headers: Mapping[str, str] | None = None) -> Any:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    return handler


def _database_error(retry_after: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if not database_unreachable(exc):
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
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
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
