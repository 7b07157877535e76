"""The embedded store: the very FastAPI app of `eos serve`, in this process, over the SQLite file.

`LocalStore.open(db)` upgrades the database, issues a token to the embedded `local` user, and
builds the app with the in-process executor (worker.executors.InProcessExecutor): it trains
runs one at a time in a background thread, with the body of the Celery task. The client talks to it through an httpx
transport that calls the ASGI app on an event loop of its own, so every request and every
error takes the same path as against a server.

The server-side packages (api, store, worker, and torch through eos_core) are imported here
only: a client of a remote server never loads them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from .errors import EosError, InputError

if TYPE_CHECKING:
    from worker.executors import InProcessExecutor


BASE_URL = "http://eos.local"  # what the in-process app is addressed as
HEARTBEAT_SECONDS = 0.5  # progress (and cancellation) is seen at least this often
SQLITE_BUSY_SECONDS = 60.0  # a transaction waits this long for another's write lock


def local_engine(url: str) -> Engine:
    """An engine for the embedded store; on SQLite every transaction starts with BEGIN IMMEDIATE.

    Here the API and the training thread write to one file concurrently. A deferred transaction
    that reads, then writes after another connection committed, fails at once with "database is
    locked" (SQLite cannot upgrade a stale snapshot, and the busy timeout does not apply), so a
    heartbeat landing during a submit would fail one of them. Taking the write lock at BEGIN makes
    them wait their turn instead.
    """
    from store.db import make_engine

    if not url.startswith("sqlite"):
        return make_engine(url)
    return make_engine(url, sqlite_begin="BEGIN IMMEDIATE", connect_args={"timeout": SQLITE_BUSY_SECONDS})


class AsgiBridge(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app that runs on an event loop in its own thread."""

    def __init__(self, app: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="eos-local-api", daemon=True)
        self._thread.start()
        self._inner = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a crash is a 500, as on a server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        return asyncio.run_coroutine_threadsafe(self._send(inner), self._loop).result()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content, request=request)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@dataclass
class LocalStore:
    """Everything the embedded mode holds: the engine, the runner, the app's transport and the token."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    runner: InProcessExecutor
    transport: AsgiBridge
    token: str

    @classmethod
    def open(cls, db: str | Path | None = None, *, create: bool = True) -> LocalStore:
        """The store in `db` (default EOS_DATABASE_URL or ~/.eos/eos.sqlite). With create=False an SQLite
        file that does not exist is refused (InputError) rather than created empty: what reads want."""
        from api.app import create_app
        from api.settings import ApiSettings
        from store.db import database_url, session_factory
        from worker.executors import InProcessExecutor

        if not create:
            require_existing(db)
        url = database_url(db)
        engine = local_engine(url)
        _prepare(engine, url)
        sessions = session_factory(engine)
        token = _issue_local_token(sessions)
        runner = InProcessExecutor(sessions, heartbeat_seconds=HEARTBEAT_SECONDS)
        app = create_app(ApiSettings(database_url=url), sessions, enqueue=runner)
        return cls(url, engine, sessions, runner, AsgiBridge(app), token)

    def close(self) -> None:
        from store.models import ApiToken
        from store.queries import hash_token

        self.runner.close()
        self.transport.close()
        with self.sessions.begin() as session:
            session.execute(delete(ApiToken).where(ApiToken.token_hash == hash_token(self.token)))
        self.engine.dispose()


def sqlite_file(db: str | Path | None) -> Path | None:
    """The SQLite file that `db` names (as store.db.database_url reads it); None for another database
    or an in-memory one."""
    from sqlalchemy.engine import make_url

    from store.db import DEFAULT_SQLITE

    text = str(db if db is not None else os.environ.get("EOS_DATABASE_URL") or DEFAULT_SQLITE)
    if "://" not in text:
        return Path(text).expanduser().resolve()
    url = make_url(text)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser().resolve()


def require_existing(db: str | Path | None) -> None:
    """Refuse an SQLite store that does not exist: a mistyped --db must not become an empty database."""
    path = sqlite_file(db)
    if path is None or path.is_file():
        return
    named = db is not None or os.environ.get("EOS_DATABASE_URL")
    why = "a mistyped --db or EOS_DATABASE_URL?" if named else "the default store: nothing was run here yet"
    raise InputError(f"no eos store at {path}: the file does not exist ({why}). `eos run` or `eos submit` creates it.")


def _prepare(engine: Engine, url: str) -> None:
    """Upgrade an SQLite store (it is ours); a shared database must already be at head (`eos db upgrade`)."""
    from store.db import SchemaOutdated, upgrade, verify_schema

    try:
        if url.startswith("sqlite"):
            upgrade(engine)
        verify_schema(engine)
    except SchemaOutdated as exc:
        engine.dispose()
        raise EosError(str(exc)) from None


def _issue_local_token(sessions: sessionmaker[Session]) -> str:
    from store import queries

    with sessions.begin() as session:
        return queries.issue_token(session=session, user=queries.local_user(session=session))
