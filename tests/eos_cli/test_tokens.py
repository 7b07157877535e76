"""`eos users create` and `eos token create|list|revoke|rotate` against a SQLite database (CliRunner):
the secret is printed once and stored hashed, revoked and expired tokens no longer authenticate, and
user names are validated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner, Result

from eos_cli.main import app, parse_expiry
from store import queries
from store.db import make_engine, session_factory
from store.models import ApiToken

runner = CliRunner()


def eos(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'eos.sqlite'}"
    assert eos("db", "upgrade", "--db", url).exit_code == 0
    return url


def user_of(db: str, secret: str) -> str | None:
    engine = make_engine(db)
    try:
        with session_factory(engine)() as session:
            user = queries.user_for_token(session=session, token=secret)
            return None if user is None else user.name
    finally:
        engine.dispose()


def secret_of(result: Result) -> str:
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("eos_") and "\n" not in secret  # the secret alone on stdout, for scripts
    return secret


def test_create_list_revoke_rotate(db: str) -> None:
    first = secret_of(eos("users", "create", "alice", "--db", db))
    second = eos("token", "create", "alice", "--expires", "30d", "--db", db)
    second_secret = secret_of(second)
    assert "of alice, expires 20" in " ".join(second.stderr.split())
    assert user_of(db, first) == user_of(db, second_secret) == "alice"

    listing = eos("token", "list", "--db", db)
    assert listing.exit_code == 0, listing.output
    assert first not in listing.stdout and second_secret not in listing.stdout  # never the secret
    assert f"{first[:10]}..." in listing.stdout and listing.stdout.count("active") == 2
    assert "never" in listing.stdout

    revoked = eos("token", "revoke", "1", "--db", db)
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked token 1 ({first[:10]}...) of alice" in revoked.stdout
    assert user_of(db, first) is None  # at once
    assert "revoked" in eos("token", "list", "alice", "--db", db).stdout

    rotated = eos("token", "rotate", second_secret[:10], "--db", db)  # by prefix
    third = secret_of(rotated)
    assert "revoked token 2" in rotated.stderr
    assert user_of(db, second_secret) is None and user_of(db, third) == "alice"

    again = eos("token", "rotate", "2", "--db", db)
    assert again.exit_code == 2 and "revoked already" in again.stderr
    assert eos("token", "revoke", "99", "--db", db).exit_code == 2
    missing = eos("token", "create", "nobody", "--db", db)
    assert missing.exit_code == 2 and "no user named 'nobody'" in missing.stderr
    assert eos("token", "list", "nobody", "--db", db).exit_code == 2


def test_stored_hashed_never_in_clear(db: str) -> None:
    secret = secret_of(eos("users", "create", "alice", "--db", db))
    engine = make_engine(db)
    with session_factory(engine)() as session:
        row = session.scalars(select(ApiToken)).one()
    engine.dispose()
    assert row.token_hash == queries.hash_token(secret) and secret not in (row.token_hash, row.prefix)


def test_an_expired_token_is_refused(db: str) -> None:
    secret = secret_of(eos("users", "create", "alice", "--db", db))
    engine = make_engine(db)
    with session_factory(engine).begin() as session:
        session.scalars(select(ApiToken)).one().expires_at = datetime.now(UTC) - timedelta(seconds=1)
    engine.dispose()
    assert user_of(db, secret) is None
    assert "expired" in eos("token", "list", "--db", db).stdout


@pytest.mark.parametrize("expires", ["yesterday", "2001-01-01", "-3d"])
def test_a_bad_or_past_expiry_is_refused(db: str, expires: str) -> None:
    eos("users", "create", "alice", "--db", db)
    result = eos("token", "create", "alice", "--expires", expires, "--db", db)
    assert result.exit_code == 2 and "--expires" in result.output
    assert eos("token", "list", "--db", db).stdout.count("eos_") == 1  # nothing created


def test_parse_expiry() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_expiry(None, now) is None
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2030-02-01", now) == datetime(2030, 2, 1, tzinfo=UTC)
    assert parse_expiry("2030-02-01T12:00+02:00", now) == datetime(2030, 2, 1, 10, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_expiry("2029-12-31", now)


@pytest.mark.parametrize("name", ["", " ", "a b", "x" * 65, "-dash", "al%ce", "bob\x00", "ünï", "a/b"])
def test_users_create_refuses_a_bad_name(db: str, name: str) -> None:
    result = eos("users", "create", "--db", db, "--", name)
    assert result.exit_code == 2 and "invalid user name" in result.stderr
    assert "eos_" not in result.stdout


@pytest.mark.parametrize("name", ["a", "alice", "a.b-c_d", "x" * 64, "Bob42"])
def test_users_create_accepts_a_good_name(db: str, name: str) -> None:
    secret_of(eos("users", "create", name, "--db", db))


def test_a_second_create_of_the_same_user_fails(db: str) -> None:
    secret_of(eos("users", "create", "alice", "--db", db))
    result = eos("users", "create", "alice", "--db", db)
    assert result.exit_code == 2 and "already exists" in result.stderr


@pytest.mark.parametrize("command", ["create", "list", "revoke", "rotate"])
def test_token_commands_have_help(command: str) -> None:
    result = eos("token", command, "--help")
    assert result.exit_code == 0 and "token" in result.stdout.lower()
