"""Tiny specs and an `eos serve` subprocess against a PostgreSQL database of its own, shared by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.postgres import database_url, session_name
from tests.resources import REDIS_URL, clear_broker

ROOT = Path(__file__).resolve().parents[2]

DATABASE = session_name("eos_test_client")
PG_URL = database_url(DATABASE)
# No worker listens under this session's broker prefix: submitted runs stay queued (the tests run them).
BROKER_URL = REDIS_URL


def tiny_spec(steps: int = 60, lr: float = 1.0, **instrument: Any) -> dict[str, Any]:
    """A linear model on 24 Gaussian-mixture points: well under a second of training."""
    return {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "dataset": {"kind": "gaussian_mixture", "classes": 3, "per_class": 8, "dim": 4},
        "model": {"kind": "linear"},
        "optimizer": {"lr": lr, "batch_size": 4, "steps": steps},
        "instrument": {
            "drift_samples": 8,
            "drift_max_samples": 16,
            "drift_every": 2,
            "sharpness_every": 20,
            "test_every": 20,
            **instrument,
        },
    }


def long_spec() -> dict[str, Any]:
    """Many cheap steps (nothing but the loss measured): still running when the test cancels it."""
    return tiny_spec(steps=200_000, every=10, drift_samples=0, sharpness_every=0, test_every=0, chunk_rows=64)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    log: Path


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"eos serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/v1/experiments", timeout=1.0).status_code == 401:  # up, auth enforced
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"eos serve did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running_server(log: Path) -> Iterator[Server]:
    """`python -m api` (what `eos serve` runs) on a free port, against PG_URL; stopped and its broker db flushed."""
    port = free_port()
    env = {**os.environ, "EOS_DATABASE_URL": PG_URL, "EOS_BROKER_URL": BROKER_URL, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        command = [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield Server(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        clear_broker()


FAILURE = "FloatingPointError: the loss exploded (simulated)"


def failing_train(fail_at: int) -> Callable[..., Any]:
    """worker.runner.train_slice whose every run raises FloatingPointError once `fail_at` steps are done,
    as a step that crashes would; each run ends alone, as eos_core.train_slice ends a run whose progress
    callback raises. Monkeypatch it in (`monkeypatch.setattr(worker.runner, "train_slice", failing_train(20))`)."""
    from eos_core import train_slice

    def crash_after(report: Any) -> Callable[[int, int], None]:
        def step_done(step: int, steps: int) -> None:
            if report is not None:
                report(step, steps)
            if step >= fail_at:
                raise FloatingPointError("the loss exploded (simulated)")

        return step_done

    def crashing(specs: Any, sinks: Any = None, progress: Any = None, **kwargs: Any) -> Any:
        reports = progress if progress is not None else [None] * len(specs)
        return train_slice(specs, sinks, [crash_after(r) for r in reports], **kwargs)

    return crashing
