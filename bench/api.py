"""API throughput and latency: `eos serve` (uvicorn, one process) against the local PostgreSQL.

Set-up: a bench database (dropped, re-created and upgraded to the Alembic head) holding one
user and one run with a 100,000-step trace (loss every step, drift every step, sharpness every
10, test loss every 100: what a full-instrumentation run stores). The server runs in a
subprocess exactly as `python -m api` starts it (api.app:create_app, factory=True).

Load: `--clients` concurrent clients (asyncio tasks, one keep-alive connection each) send
requests back to back for `--seconds` on each endpoint in turn:

    health  GET /api/v1/health                                     no auth, no database: the floor
    run     GET /api/v1/runs/{id}                                  token lookup + one row
    trace   GET /api/v1/runs/{id}/trace?metrics=loss&max_points=1000   100k-row read + downsample

Latency is per request as the client sees it (queueing in the server included). The client is
a minimal HTTP/1.1 speaker (~0.1 ms of CPU a request): httpx's AsyncClient (`--client httpx`)
costs ~4 ms a request with 50 connections, more than the server, and then the bench measures
the client. CPU per request of the server (its processes) and of the client come from /proc:
on a shared machine they are steadier than the rates. Client, server and PostgreSQL share the
machine's cores, so the rates are a floor for a dedicated server.

    python bench/api.py                    # about 40 s
    python bench/api.py --clients 10 --seconds 5 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eos_core.trace import METRICS  # noqa: E402
from store import queries  # noqa: E402
from store.db import make_engine, session_factory, upgrade  # noqa: E402
from store.traces import append_trace  # noqa: E402

SERVER = os.environ.get("EOS_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DATABASE = "eos_bench_api"
TRACE_STEPS = 100_000


# --- set-up -------------------------------------------------------------------------------------


def recreate_database(url: str) -> None:
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    upgrade(url)


def synthetic_trace(steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    step = np.arange(steps, dtype=np.int64)
    chunk = {name: np.full(steps, np.nan) for name in METRICS}
    chunk["step"] = step
    chunk["loss"] = 2.0 / (1.0 + 0.01 * step) * np.exp(0.1 * rng.standard_normal(steps))
    chunk["drift"] = 1e-3 * rng.standard_normal(steps)
    chunk["stable_p"] = rng.uniform(size=steps)
    chunk["sharpness"] = np.where(step % 10 == 0, 2.0 + 0.1 * rng.standard_normal(steps), np.nan)
    chunk["test_loss"] = np.where(step % 100 == 0, chunk["loss"] * 1.1, np.nan)
    return chunk


def fill(url: str) -> tuple[str, int]:
    """One user and one run with a TRACE_STEPS-step trace; returns (token, run id)."""
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        user, token = queries.create_user(session=session, name="bench")
        spec = {"name": "bench", "device": "cpu", "optimizer": {"lr": 0.5, "steps": TRACE_STEPS}}
        experiment = queries.create_experiment(session=session, owner=user, spec=spec)
        (run,) = queries.list_runs(session=session, experiment_id=experiment.id)
        append_trace(session=session, run_id=run.id, chunk=synthetic_trace(TRACE_STEPS))
        run_id = run.id
    engine.dispose()
    return token, run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EOS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "api", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def wait_until_up(base: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer /health in time")


# --- load ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return float("nan")
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children)


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray  # seconds, successful requests
    server_cpu: float = float("nan")  # CPU seconds the server process used during the load
    client_cpu: float = float("nan")

    HEADER = (
        "| route  | requests | errors |  req/s | p50 (ms) | p99 (ms) | server CPU ms/req | client CPU ms/req |\n"
        "|--------|---------:|-------:|-------:|---------:|---------:|------------------:|------------------:|"
    )

    def row(self) -> str:
        p50, p99 = (np.percentile(self.latencies, [50, 99]) * 1e3) if len(self.latencies) else (np.nan, np.nan)
        rate = self.requests / self.seconds
        server, client = (1e3 * cpu / max(self.requests, 1) for cpu in (self.server_cpu, self.client_cpu))
        return (
            f"| {self.name:<6} | {self.requests:>8} | {self.errors:>6} | {rate:>6.1f} | {p50:>8.1f} | {p99:>8.1f} "
            f"| {server:>17.2f} | {client:>17.2f} |"
        )


class RawClient:
    """One keep-alive HTTP/1.1 connection speaking just enough protocol for GET with a Content-Length reply.

    httpx's AsyncClient spends ~4 ms of CPU per request with 50 connections here, more than the
    server: with it the bench measures the client. This costs ~0.1 ms.
    """

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


class HttpxClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str) -> int:
        return (await self.client.get(path)).status_code

    async def close(self) -> None:
        pass


Getter = RawClient | HttpxClient


async def client_loop(client: Getter, path: str, deadline: float, out: list[float], failed: list[int]) -> None:
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            code = await client.get(path)
            if code == 200:
                out.append(time.perf_counter() - started)
            else:
                failed.append(code)
    finally:
        await client.close()


async def hammer(name: str, base: str, path: str, token: str, args: argparse.Namespace) -> Result:
    url = httpx.URL(base)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60.0) as shared:
        for _ in range(5):  # warm-up: the first import of anything lazy, caches
            (await shared.get(path)).raise_for_status()
        clients: list[Getter] = [
            RawClient(url.host, url.port or 80, token) if args.client == "raw" else HttpxClient(shared)
            for _ in range(args.clients)
        ]
        latencies: list[float] = []
        failed: list[int] = []
        started = time.perf_counter()
        deadline = started + args.seconds
        await asyncio.gather(*(client_loop(c, path, deadline, latencies, failed) for c in clients))
        elapsed = time.perf_counter() - started
    return Result(name, len(latencies) + len(failed), len(failed), elapsed, np.array(latencies))


def measure(pid: int, name: str, base: str, path: str, token: str, args: argparse.Namespace) -> Result:
    server_before, client_before = cpu_seconds(pid), time.process_time()
    result = asyncio.run(hammer(name, base, path, token, args))
    result.server_cpu = cpu_seconds(pid) - server_before
    result.client_cpu = time.process_time() - client_before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per endpoint (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="load generator: minimal asyncio HTTP/1.1 or httpx"
    )
    args = parser.parse_args()

    url = f"{SERVER}/{DATABASE}"
    t0 = time.perf_counter()
    recreate_database(url)
    token, run_id = fill(url)
    took = time.perf_counter() - t0
    print(f"bench database {DATABASE}: run {run_id} with a {TRACE_STEPS:,}-step trace (set up in {took:.1f} s)")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(url, port, args.workers)
    try:
        wait_until_up(base, server)
        endpoints = {
            "health": "/api/v1/health",
            "run": f"/api/v1/runs/{run_id}",
            "trace": f"/api/v1/runs/{run_id}/trace?metrics=loss&max_points=1000",
        }
        results = [measure(server.pid, n, base, p, token, args) for n, p in endpoints.items()]
    finally:
        server.terminate()
        server.wait(timeout=10)

    setting = f"{args.clients} concurrent {args.client} clients, {args.seconds:g} s per endpoint"
    print(f"\n{setting}, uvicorn {args.workers} process(es), {os.cpu_count()} CPUs")
    print(Result.HEADER)
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
