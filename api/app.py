"""The FastAPI application: `create_app()` is the factory `eos serve` hands to uvicorn (factory=True).

    uvicorn api.app:create_app --factory      # or: python -m api --port 8000

Everything process-wide (settings, the session factory, the engine, the enqueue function)
lives on `app.state`, so tests inject a transactional session factory and a fake enqueue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store.db import SchemaOutdated, database_url, make_engine, session_factory, verify_schema

from . import dashboard, errors
from .deps import Enqueue
from .limits import BodySizeLimit
from .routes import experiments, health, runs, traces
from .settings import ApiSettings

log = logging.getLogger(__name__)
PREFIX = "/api/v1"


def broker_enqueue(sessions: sessionmaker[Session], broker_url: str) -> Enqueue:
    """Send runs to Celery; a failure leaves them queued and the reaper sends them again."""

    def enqueue(run_ids: Sequence[int]) -> None:
        from worker.dispatch import enqueue as send  # Celery is imported only by a serving process

        if not run_ids:
            return
        try:
            send(run_ids, sessions, broker_url)
        except Exception:
            log.exception("could not send runs %s to the broker; they stay queued for the reaper", list(run_ids))

    return enqueue


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
        pool = settings.db_pool_size
        engine = make_engine(settings.database_url or database_url(), pool_size=pool, max_overflow=pool)
        sessions = session_factory(engine)
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
        openapi_url=f"{PREFIX}/openapi.json",
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.engine = engine
    app.state.enqueue = enqueue or broker_enqueue(sessions, settings.broker_url)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    errors.install(app)
    for module in (experiments, runs, traces, health):
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(dashboard.router)  # the HTML pages at /, calling the API above
    return app
