"""The test databases on the real PostgreSQL: one per suite and per test session, recreated from
scratch (so a changed migration is always applied from the start), upgraded to the Alembic head,
and dropped when the session ends. Names carry the session's token (tests.resources), so two
clones running `make test` at once never share a database."""

from __future__ import annotations

import os
import re

import psycopg
from sqlalchemy import Engine

from store.db import make_engine, upgrade

from .resources import SESSION, process_alive

SERVER = os.environ.get("EOS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
# A database that always exists, where the test databases are dropped and created.
ADMIN_DSN = f"{SERVER}/test".replace("postgresql+psycopg://", "postgresql://")
_CREATED: list[str] = []
_OWNED = re.compile(r"^eos_test_\w+?_p(\d+)_[0-9a-f]+$")


def session_name(base: str) -> str:
    """`base` made unique to this test session (a database name, a schema)."""
    return f"{base}_{SESSION}"


def database_url(name: str) -> str:
    return f"{SERVER}/{name}"


def recreate_database(name: str) -> None:
    """Drop database `name` (closing its connections) and create it empty."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    if name not in _CREATED:
        _CREATED.append(name)


def fresh_engine(name: str) -> Engine:
    """An engine on database `name`, recreated empty and upgraded to head."""
    recreate_database(name)
    engine = make_engine(database_url(name))
    upgrade(engine)
    return engine


def drop_session_databases() -> None:
    """Drop this session's databases, and those left by sessions whose process is gone."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'eos_test_%'")]
        for name in names:
            owner = _OWNED.match(name)
            if name in _CREATED or (owner and not process_alive(int(owner.group(1)))):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
