"""Private servers and project processes for the fault tests and bench/faults.py.

Never the shared PostgreSQL (5432) or Redis (6379): a `Cluster` starts its own `redis-server`
and its own PostgreSQL 15 (`initdb` in a temporary folder) on free ports, creates database
`eos` at the Alembic head, and starts the project's processes against them exactly as a
deployment does: the API (`python -m api`, what `eos serve` runs), workers (`eos worker`) and
the reaper loop (`eos reaper`). Each process runs in a session of its own, logs to a file and
can be SIGKILLed with its children; Redis can be killed and restarted empty on the same port,
PostgreSQL stopped and started again on the same port. `Cluster.close()` kills everything and
removes the folder, whatever happened before.

The processes inherit this interpreter, the repository root as working directory and on
PYTHONPATH (so a worktree of another commit runs its own code), and no EOS_* variable but
those the cluster sets: the project's defaults unless `settings` overrides them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx
import psycopg
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store import queries
from store.db import make_engine, session_factory, upgrade

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("EOS_FAULTS_PG_BIN", "/usr/local/bin"))
REDIS_SERVER = os.environ.get("EOS_FAULTS_REDIS_SERVER", "/usr/bin/redis-server")
DATABASE = "eos"
START_TIMEOUT = 90.0  # seconds for a process to come up on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll `predicate` until it holds; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def poll_until(predicate: Callable[[], bool], deadline: float, interval: float = 0.25) -> float | None:
    """Poll until `predicate` holds (returns time.monotonic() then) or the monotonic `deadline` passes (None)."""
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Process:
    """A subprocess in a session of its own (SIGKILL reaches its children), output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.ended = False  # the harness killed or stopped it on purpose
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv), cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def argv_name(self) -> str | None:
        """The value of its --name option, if it has one."""
        if "--name" in self.argv[:-1]:
            return self.argv[self.argv.index("--name") + 1]
        return None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 2000) -> str:
        return self.output()[-chars:]

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        def printed() -> bool:
            self.check_alive()
            return text in self.output()

        wait_until(printed, timeout, f"{self.name} to print {text!r}")

    def kill(self) -> None:
        """SIGKILL to the whole process group: no chance to acknowledge, clean up or mark anything."""
        self.ended = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> None:
        """SIGTERM to the process itself: a graceful stop."""
        self.ended = True
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def describe(self) -> str:
        return "alive" if self.alive else f"exited with {self.proc.returncode}"


class Redis:
    """`redis-server` without persistence: killed, it restarts empty on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir)]
        self.process = Process("redis", argv, os.environ, self.workdir / f"redis-{self.starts}.log")
        process = self.process

        def answers() -> bool:
            process.check_alive()
            return self.ping()

        wait_until(answers, 30, "redis-server to answer")

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.alive:
            self.process.kill()

    def tail(self) -> str:
        return self.process.tail() if self.process is not None else ""


class Postgres:
    """A PostgreSQL cluster of its own (initdb, trust auth, user postgres) on a free port.

    initdb and the server refuse to run as root: as root they run as the `postgres` OS user,
    in a folder it owns, with the unix socket there too.
    """

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / "pg"
        self.data = self.home / "data"
        self.log = self.home / "server.log"
        self.port = free_port()
        self.running = False

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *argv], cwd=self.home, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self.home.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.home}"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def create_database(self, name: str = DATABASE) -> None:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Cluster:
    """Private PostgreSQL and Redis, the schema at head, and the project's processes.

    Use as a context manager: leaving it kills every process, stops the servers and removes
    the folder (kept with keep_dir=True, for reading the logs).
    """

    def __init__(self, settings: Mapping[str, str] | None = None, keep_dir: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eos-faults-"))
        self.dir.chmod(0o755)  # the postgres OS user must reach its folder inside
        self.settings = dict(settings or {})
        self.keep_dir = keep_dir
        self.redis = Redis(self.dir)
        self.postgres = Postgres(self.dir)
        self.processes: list[Process] = []
        self._engine: Engine | None = None

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        self.redis.start()
        self.postgres.init()
        self.postgres.start()
        self.postgres.create_database()
        self._engine = make_engine(self.postgres.url(), pool_size=2, max_overflow=2)
        upgrade(self._engine)

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the cluster is not started"
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        return session_factory(self.engine)

    def env(self) -> dict[str, str]:
        """What every project process gets: no EOS_* but the cluster's, this checkout first on the path."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("EOS_")}
        path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            EOS_DATABASE_URL=self.postgres.url(),
            EOS_BROKER_URL=self.redis.url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(dict.fromkeys(path)),
        )
        # Tiny models: torch's default thread pool per process, on 2 shared cores, spins and makes a
        # 3-second run take 30 (measured); one thread each changes no project setting.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.settings)
        return env

    def spawn(self, name: str, argv: Sequence[str]) -> Process:
        process = Process(name, [sys.executable, *argv], self.env(), self.dir / f"{name}.log")
        self.processes.append(process)
        return process

    def start_api(self) -> str:
        """`python -m api` (what `eos serve` runs) on a free port; returns its base URL once it answers."""
        return self._wait_api(self._spawn_api())

    def start_workers(self, count: int, queue: str = "cpu") -> list[Process]:
        """`eos worker` processes, started together; returned once each consumes ("ready.")."""
        workers = self._spawn_workers(count, queue)
        for worker in workers:
            worker.wait_for_output("ready.")
        return workers

    def start_all(self, workers: int, queue: str = "cpu") -> tuple[str, list[Process]]:
        """The API, `workers` workers and the reaper, started at once (imports overlap): (API URL, workers)."""
        api = self._spawn_api()
        started = self._spawn_workers(workers, queue)
        reaper = self.spawn("reaper", ["-m", "eos_cli.main", "reaper"])
        url = self._wait_api(api)
        for worker in started:
            worker.wait_for_output("ready.")
        reaper.check_alive()
        return url, started

    def _spawn_api(self) -> tuple[Process, str]:
        port = free_port()
        process = self.spawn("api", ["-m", "api", "--port", str(port), "--log-level", "warning"])
        return process, f"http://127.0.0.1:{port}"

    def _wait_api(self, api: tuple[Process, str]) -> str:
        process, url = api

        def healthy() -> bool:
            process.check_alive()
            try:
                return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, START_TIMEOUT, "the API to answer")
        return url

    def _spawn_workers(self, count: int, queue: str) -> list[Process]:
        tag = f"{os.getpid()}-{time.time_ns() % 10**9}"
        return [
            self.spawn(f"worker{i}", ["-m", "eos_cli.main", "worker", "--queue", queue, "--name", f"w{i}-{tag}@faults"])
            for i in range(count)
        ]

    def create_user(self, name: str = "alice") -> str:
        """A user; returns their API token."""
        with self.sessions.begin() as session:
            _, token = queries.create_user(session=session, name=name)
        return token

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def logs(self, chars: int = 1500) -> str:
        """The tail of every log: what a failing test shows."""
        parts = [f"--- {p.name} ({p.describe()}) ---\n{p.tail(chars)}" for p in self.processes]
        parts.append(f"--- redis ---\n{self.redis.tail()}")
        parts.append(f"--- postgres ---\n{self.postgres.tail(chars)}")
        return "\n".join(parts)

    def close(self) -> None:
        """Kill every process and server and remove the folder; each step runs whatever the others did."""
        steps: list[Callable[[], None]] = [p.kill for p in reversed(self.processes)]
        if self._engine is not None:
            steps.append(self._engine.dispose)
        steps += [self.postgres.close, self.redis.kill]
        for step in steps:
            try:
                step()
            except Exception as exc:  # clean up the rest regardless
                print(f"eos faults: clean-up step failed: {exc!r}", file=sys.stderr)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
