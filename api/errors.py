"""Store and science exceptions -> HTTP errors a client can act on.

Field errors follow FastAPI's own 422 shape, `{"detail": [{"type", "loc", "msg"}, ...]}`,
so a client handles a bad spec and a malformed body the same way. The rest are
`{"detail": "<message>"}` with the status that says what to do next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from eos_core.sweep import SweepError
from eos_core.trace import METRICS
from store.queries import Conflict, NotFound, QuotaExceeded
from store.traces import UnknownMetric

FieldError = dict[str, Any]


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


def _detail(code: int) -> Any:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


def install(app: FastAPI) -> None:
    app.add_exception_handler(NotFound, _detail(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(Conflict, _detail(status.HTTP_409_CONFLICT))
    app.add_exception_handler(QuotaExceeded, _detail(status.HTTP_429_TOO_MANY_REQUESTS))
    app.add_exception_handler(UnknownMetric, _unknown_metric)
