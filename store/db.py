"""Engines, sessions and the schema check: one place that knows how to reach the database.

PostgreSQL (`postgresql+psycopg://...`) is the shared store; SQLite is the embedded one for a
laptop (`sqlite:///path`). Both the API and the worker call `verify_schema` at start-up and
refuse to run on a database that is not at the Alembic head.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

# The migrations live next to this package in the repository; resolved from this file so that
# neither `alembic.ini` nor the current directory is needed at run time.
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
DEFAULT_SQLITE = Path("~/.eos/eos.sqlite")


class SchemaOutdated(RuntimeError):
    """The database is not at the Alembic head revision (empty, behind, or ahead of this code)."""


def database_url(db: str | Path | None = None) -> str:
    """The URL for `db`: a database URL as is, or an SQLite file (its folder created).

    None means EOS_DATABASE_URL, or the embedded store's file under ~/.eos.
    """
    if db is None:
        db = os.environ.get("EOS_DATABASE_URL") or DEFAULT_SQLITE
    text = str(db)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_engine(url: str, *, sqlite_begin: str = "BEGIN", **kwargs: Any) -> Engine:
    """An engine for a PostgreSQL (psycopg 3) or SQLite URL; extra kwargs go to create_engine.

    `sqlite_begin="BEGIN IMMEDIATE"` takes SQLite's write lock when a transaction starts: for
    a file that several threads write at once (the embedded client), where a deferred
    transaction that reads and then writes after another commit fails with "database is locked".
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # workers hold connections across long runs
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine, begin: str) -> None:
    """Foreign keys and WAL on every connection, and transactions SQLAlchemy controls.

    pysqlite's own transaction handling opens transactions late and breaks SAVEPOINT, so it
    is switched off and SQLAlchemy emits BEGIN itself (the recipe from the SQLAlchemy docs).
    WAL lets the API read while a worker writes.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough under WAL, much faster commits
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects returned by a route stay readable after its commit.
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config that needs no alembic.ini and works from any directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def verify_schema(engine: Engine) -> None:
    """Raise SchemaOutdated unless the database is at the head revision."""
    head = head_revision()
    with engine.connect() as connection:
        current = current_revision(connection)
    if current != head:
        shown = current or "none (empty database)"
        raise SchemaOutdated(
            f"database {engine.url.render_as_string(hide_password=True)} is at revision {shown}, "
            f"this code needs {head}: run `eos db upgrade`"
        )


def upgrade(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Alembic upgrade, programmatically (what `eos db upgrade` runs)."""
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    config = alembic_config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()


def database_unreachable(error: BaseException) -> bool:
    """Is this the database being unreachable (an outage), not a bug or a constraint? The driver
    failed to connect or lost the connection (OperationalError, or any DBAPIError that invalidated
    its connection), or no pooled connection came free within the pool timeout. The API answers
    these with 503; workers wait them out."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.TimeoutError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)
