"""Fixtures: the client over an embedded SQLite store, with one finished sweep shared by a module, and a
real `eos serve` over PostgreSQL with two users."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session, sessionmaker

from eos_client import Client, Experiment
from store import queries
from store.db import session_factory

from ..postgres import fresh_engine
from .support import DATABASE, Server, running_server, tiny_spec

LRS = [0.5, 2.0]


@pytest.fixture
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with Client.local(tmp_path_factory.mktemp("local") / "eos.sqlite") as client:
        yield client


@dataclass
class Finished:
    client: Client
    experiment: Experiment


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    """A sweep over optimizer.lr, submitted and waited for on an embedded store."""
    with Client.local(tmp_path_factory.mktemp("finished") / "eos.sqlite") as client:
        experiment = client.submit(tiny_spec(), sweep={"optimizer.lr": LRS})
        client.wait(experiment, progress=False, timeout=120)
        yield Finished(client, experiment)


@dataclass
class Remote:
    server: Server
    sessions: sessionmaker[Session]
    tokens: dict[str, str]

    def client(self, user: str = "alice") -> Client:
        return Client(self.server.url, self.tokens[user])


@pytest.fixture(scope="session")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    engine = fresh_engine(DATABASE)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        tokens = {name: queries.create_user(session=session, name=name)[1] for name in ("alice", "bob")}
    try:
        with running_server(tmp_path_factory.mktemp("server") / "serve.log") as server:
            yield Remote(server, sessions, tokens)
    finally:
        engine.dispose()
