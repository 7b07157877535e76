"""The test databases on the real PostgreSQL: one per suite, recreated from scratch each session
(so a changed migration is always applied from the start) and upgraded to the Alembic head."""

from __future__ import annotations

import os

import psycopg
from sqlalchemy import Engine

from store.db import make_engine, upgrade

SERVER = os.environ.get("EOS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
# A database that always exists, where the test databases are dropped and created.
ADMIN_DSN = f"{SERVER}/test".replace("postgresql+psycopg://", "postgresql://")


def database_url(name: str) -> str:
    return f"{SERVER}/{name}"


def recreate_database(name: str) -> None:
    """Drop database `name` (closing its connections) and create it empty."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def fresh_engine(name: str) -> Engine:
    """An engine on database `name`, recreated empty and upgraded to head."""
    recreate_database(name)
    engine = make_engine(database_url(name))
    upgrade(engine)
    return engine
