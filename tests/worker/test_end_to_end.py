"""End to end over HTTP: `eos serve` and `eos worker` as real processes, PostgreSQL and Redis."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy.orm import Session, sessionmaker

from eos_core import RunResult, RunSpec, train_slice
from store import queries

from .conftest import ROOT, WorkerProcess, wait_for, worker_env
from .test_worker import SPEC

pytestmark = pytest.mark.slow  # a server, a worker and a sweep over HTTP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eos_cli.main", "serve", "--port", str(port)],
        cwd=ROOT,
        env=worker_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), 60, "the API to start")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _token(sessions: sessionmaker[Session], name: str = "alice") -> str:
    with sessions.begin() as session:
        _, token = queries.create_user(session=session, name=name)
    return token


def test_sweep_over_http_reads_back_what_train_produced(
    sessions: sessionmaker[Session], server: str, start_worker: Callable[[str], WorkerProcess]
) -> None:
    start_worker("cpu")
    api = httpx.Client(base_url=f"{server}/api/v1", headers={"Authorization": f"Bearer {_token(sessions)}"})
    body: dict[str, Any] = {"spec": SPEC, "sweep": {"optimizer.lr": [10.0, 100.0], "seed": [0, 1]}, "tags": ["e2e"]}
    created = api.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]

    def finished() -> bool:
        runs = api.get(f"/experiments/{experiment_id}").json()["runs"]
        return len(runs) == 4 and all(r["status"] in ("completed", "diverged", "failed") for r in runs)

    wait_for(finished, 240, "the sweep to finish")
    runs = api.get(f"/experiments/{experiment_id}").json()["runs"]
    assert {r["status"] for r in runs} == {"completed"}
    assert sorted((r["params"]["optimizer.lr"], r["params"]["seed"]) for r in runs) == [
        (10.0, 0),
        (10.0, 1),
        (100.0, 0),
        (100.0, 1),
    ]
    runs.sort(key=lambda r: r["id"])
    specs = [
        RunSpec.model_validate(
            {**SPEC, "optimizer": {**SPEC["optimizer"], "lr": r["params"]["optimizer.lr"]}, "seed": r["params"]["seed"]}
        )
        for r in runs
    ]
    # The worker trains the four as one slice, in the order of their ids (worker.slicing): the same slice,
    # trained here, is the reference (in float32 a run stacked with others may differ by rounding from it alone).
    outcomes = train_slice(specs)
    for run, expected in zip(runs, outcomes, strict=True):
        assert isinstance(expected, RunResult)
        detail = api.get(f"/runs/{run['id']}").json()
        csv = api.get(f"/runs/{run['id']}/trace", params={"format": "csv"})
        assert csv.status_code == 200
        frame = pd.read_csv(io.StringIO(csv.text))
        np.testing.assert_array_equal(frame["step"].to_numpy(), expected.trace["step"])
        for name in ("loss", "drift", "stable_p", "sharpness", "test_acc"):
            np.testing.assert_array_equal(frame[name].to_numpy(), expected.trace[name], err_msg=name)
        summary = detail["summary"]
        assert summary["entrance_step"] == expected.summary["entrance_step"]
        assert summary["exit_steps"] == expected.summary["exit_steps"]
        assert summary["final_loss"] == pytest.approx(expected.summary["final_loss"], rel=0, abs=0)
        events = api.get(f"/runs/{run['id']}/events").json()["items"]
        exits = [e["step"] for e in events if e["kind"] == "exit"]
        assert exits == expected.summary["exit_steps"]
        downsampled = api.get(f"/runs/{run['id']}/trace", params={"metrics": "loss", "max_points": 50}).json()
        assert 0 < downsampled["points"] <= 50 and len(downsampled["columns"]["loss_max"]) == downsampled["points"]
        assert max(downsampled["columns"]["loss_max"]) == pytest.approx(float(np.nanmax(expected.trace["loss"])))


def test_worker_refuses_a_database_behind_head(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    env = worker_env(EOS_DATABASE_URL=f"sqlite:///{empty}")
    proc = subprocess.run(
        [sys.executable, "-m", "eos_cli.main", "worker", "--queue", "cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "eos db upgrade" in proc.stdout + proc.stderr
