"""Engines, the schema check and the migration, on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from store.db import SchemaOutdated, alembic_config, database_url, head_revision, make_engine, upgrade, verify_schema
from store.models import Base

from ..postgres import ADMIN_DSN
from .support import ADMIN_URL


@contextmanager
def empty_database(kind: str, tmp_path: Path) -> Iterator[Engine]:
    """An empty PostgreSQL schema (first on the search_path) in the admin database, or an empty SQLite file."""
    if kind == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
        yield engine
        engine.dispose()
        return
    schema = f"empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    engine = make_engine(ADMIN_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_verify_schema_refuses_an_empty_database_until_upgraded(kind: str, tmp_path: Path) -> None:
    with empty_database(kind, tmp_path) as engine:
        with pytest.raises(SchemaOutdated) as info:
            verify_schema(engine)
        message = str(info.value)
        assert "eos db upgrade" in message and str(head_revision()) in message and "empty" in message
        upgrade(engine)
        verify_schema(engine)
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_migration_matches_the_models_and_downgrades(kind: str, tmp_path: Path) -> None:
    with empty_database(kind, tmp_path) as engine:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        with pytest.raises(SchemaOutdated):
            verify_schema(engine)


def test_upgrade_takes_a_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by_url.sqlite'}"
    upgrade(url)
    verify_schema(make_engine(url))


def test_sqlite_engine_enforces_foreign_keys_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.sqlite'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    engine.dispose()


def test_sqlite_savepoints_stay_inside_the_outer_transaction(tmp_path: Path) -> None:
    """Without make_engine's BEGIN, pysqlite would not have begun the outer transaction before the
    SAVEPOINT (no DML yet), so RELEASE would commit and the outer rollback would undo nothing."""
    engine = make_engine(f"sqlite:///{tmp_path / 'sp.sqlite'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    with engine.connect() as connection:
        outer = connection.begin()
        assert connection.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
        with connection.begin_nested():
            connection.execute(text("INSERT INTO t VALUES (1)"))
        nested = connection.begin_nested()
        connection.execute(text("INSERT INTO t VALUES (2)"))
        nested.rollback()
        assert connection.execute(text("SELECT x FROM t")).scalars().all() == [1]
        outer.rollback()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    engine.dispose()


def test_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOS_DATABASE_URL", "postgresql+psycopg://u@db/eos")
    assert database_url() == "postgresql+psycopg://u@db/eos"


def test_database_url_defaults_to_sqlite_under_home(tmp_home: Path) -> None:
    url = database_url()
    assert url == f"sqlite:///{tmp_home / '.eos' / 'eos.sqlite'}"
    assert (tmp_home / ".eos").is_dir()
