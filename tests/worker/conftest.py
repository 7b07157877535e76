"""A real PostgreSQL database, a real Redis broker and real Celery worker processes.

Workers commit from other processes, so isolation is per test by truncation, in a
database of its own and under a Redis key prefix of its own (both unique to the test session).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from store.db import session_factory

from ..postgres import database_url, fresh_engine, session_name
from ..resources import REDIS_URL, clear_broker

DB_NAME = session_name("eos_test_worker")
DB_URL = database_url(DB_NAME)
BROKER_URL = REDIS_URL
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    engine = fresh_engine(DB_NAME)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE users, api_tokens, experiments, runs, events, trace_chunks, workers RESTART IDENTITY CASCADE"
            )
        )
    clear_broker()
    yield session_factory(engine)


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        EOS_DATABASE_URL=DB_URL,
        EOS_BROKER_URL=BROKER_URL,
        EOS_HEARTBEAT_SECONDS="0.3",
        EOS_FLUSH_ROWS="64",
        EOS_STALE_SECONDS="3",
        EOS_QUEUE_CHECK_SECONDS="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """`eos worker` in a subprocess; its log goes to a file the test can show on failure."""

    def __init__(self, queue: str, log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eos_cli.main",
                "worker",
                "--queue",
                queue,
                "--name",
                f"{queue}-{time.time_ns()}@test",
            ],
            cwd=ROOT,
            env=worker_env(),
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if "ready." in self.log.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no chance to acknowledge, clean up or mark anything."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(queue: str = "cpu") -> WorkerProcess:
        proc = WorkerProcess(queue, tmp_path / f"worker-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
