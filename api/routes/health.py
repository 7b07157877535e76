"""GET /health (the process answers) and GET /ready (database at head, broker reachable). No auth."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from store.db import verify_schema

from ..broker import connect
from ..deps import SettingsDep
from ..schemas import Health, Readiness

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_S = 2.0


@router.get("/health")
def health() -> Health:
    """Liveness: the process is up and serving."""
    return Health(status="ok")


def database_state(request: Request) -> str:
    try:
        verify_schema(request.app.state.engine)
    except Exception as exc:  # any failure is the answer: not ready, and why
        return f"error: {exc}"
    return "ok"


def broker_state(url: str) -> str:
    try:
        connect(url, BROKER_TIMEOUT_S)
    except Exception as exc:
        return f"error: {exc}"
    return "ok"


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def ready(request: Request, settings: SettingsDep) -> Readiness | JSONResponse:
    """Readiness: the database is reachable and at the Alembic head, and the broker is reachable (503 if not)."""
    result = Readiness(status="ok", database=database_state(request), broker=broker_state(settings.broker_url))
    if result.database != "ok" or result.broker != "ok":
        result.status = "unavailable"
        return JSONResponse(result.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return result
