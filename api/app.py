"""The FastAPI application: `create_app()` is the factory `eos serve` hands to uvicorn (factory=True).

    uvicorn api.app:create_app --factory      # or: python -m api --port 8000

Everything process-wide (settings, the session factory, the engine, the executor's submit
function, the broker check, the admission counter) lives on `app.state`, so tests inject a
transactional session factory and a fake enqueue. The executor (worker/executors.py) is chosen
here, once: Celery for `eos serve`, in-process for the embedded store (`Client.local`).

Bursts and outages: at most `EOS_MAX_IN_FLIGHT` API requests are served at once (api/admission.py),
a request waits at most `EOS_DB_POOL_TIMEOUT` for a database connection, and an unreachable
database or broker is a 503 with `Retry-After` (api/errors.py, api/broker.py), never a hang or a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store.db import SchemaOutdated, database_url, make_engine, session_factory, verify_schema

from . import dashboard, errors
from .admission import Admission, AdmissionControl
from .broker import BrokerCheck
from .deps import Enqueue
from .limits import BodySizeLimit
from .routes import experiments, health, runs, tokens, traces, workers
from .schemas import Message
from .settings import ApiSettings

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
UNAVAILABLE = {
    "model": Message,
    "description": "busy (too many requests in progress), or the database is unreachable: retry after "
    "`Retry-After` seconds",
}


def celery_submit(sessions: sessionmaker[Session], broker_url: str) -> Enqueue:
    from worker.executors import CeleryExecutor  # Celery is imported only when sending

    return CeleryExecutor(sessions, broker_url).submit


def make_api_engine(settings: ApiSettings) -> Engine:
    """The API's engine: pool size and overflow, a short pool timeout and (PostgreSQL) a connect timeout."""
    url = settings.database_url or database_url()
    pool = settings.db_pool_size
    kwargs: dict[str, Any] = {"pool_size": pool, "max_overflow": pool, "pool_timeout": settings.db_pool_timeout}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": settings.db_connect_timeout}
    return make_engine(url, **kwargs)


def _engine_of(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw.get("bind")
    assert bind is not None, "the session factory must be bound to an engine or a connection"
    engine: Engine = bind.engine
    return engine


def _check_schema(engine: Engine) -> None:
    """Refuse to start on a database that is not at the Alembic head (the message names `eos db upgrade`)."""
    try:
        verify_schema(engine)
    except SchemaOutdated as exc:
        log.critical("%s", exc)
        raise RuntimeError(f"eos api refuses to start: {exc}") from None


def create_app(
    settings: ApiSettings | None = None,
    sessions: sessionmaker[Session] | None = None,
    enqueue: Enqueue | None = None,
) -> FastAPI:
    settings = settings or ApiSettings()
    owns_engine = sessions is None
    if sessions is None:
        sessions = session_factory(make_api_engine(settings))
    engine = _engine_of(sessions)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _check_schema(engine)
        yield
        if owns_engine:
            engine.dispose()

    app = FastAPI(
        title="eos",
        summary="Experiments on SGD at the edge of stability: submit specs and sweeps, follow runs, read traces.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url=f"{PREFIX}/openapi.json",  # and /openapi.json (below)
        responses={503: UNAVAILABLE},
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.engine = engine
    app.state.enqueue = enqueue or celery_submit(sessions, settings.broker_url)
    # Only an app that sends to the broker itself checks it; an injected enqueue (the embedded
    # local mode, tests) has none to check.
    app.state.broker = BrokerCheck(settings.broker_url) if enqueue is None else None
    app.state.admission = Admission(limit=settings.in_flight_limit, retry_after=settings.retry_after_seconds)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    # Added last, so outermost: an excess request is refused before anything else runs.
    cheap = {f"{PREFIX}/health", f"{PREFIX}/ready", f"{PREFIX}/openapi.json"}  # no database, or their own check
    app.add_middleware(AdmissionControl, admission=app.state.admission, prefix=PREFIX, exempt=cheap)
    errors.install(app, settings.retry_after_seconds)
    for module in (experiments, runs, traces, workers, tokens, health):
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(dashboard.router)  # the HTML pages at /, calling the API above

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_at_root() -> JSONResponse:
        """The OpenAPI document where tools look first; also at /api/v1/openapi.json."""
        return JSONResponse(app.openapi())

    return app
