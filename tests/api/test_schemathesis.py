"""Schemathesis over every operation of the OpenAPI document, against a real server with a real token.

The server (tests/api/fuzz_server.py: the API, runs never sent to a broker) runs with uvicorn on a
database of this test session, seeded with a trained run (trace, summary, events), two queued ones
and another user's experiment, so that ids found in the schema's examples and links lead somewhere.
`st run` then plays every phase (examples, coverage, fuzzing, stateful) with every check, and the
test fails on any failure: a 5xx, a status the operation does not document, a response that violates
its schema, a schema-invalid request accepted, a wrong `Allow`, ... (tests/api/schemathesis.toml
lists the one allowance). Deterministic generation: the same code gives the same cases.

    EOS_FUZZ_EXAMPLES=200 pytest tests/api/test_schemathesis.py -s   # more cases per operation
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import sessionmaker

from eos_core import RunSpec, train
from store import lifecycle, queries
from store.traces import append_trace
from tests.eos_client.support import free_port, tiny_spec
from tests.postgres import database_url, fresh_engine, session_name
from tests.resources import REDIS_URL

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
DATABASE = session_name("eos_test_api_fuzz")
# Cases per operation and phase: 2,232 cases in all, 65 to 90 s on a shared 2-core machine.
EXAMPLES = int(os.environ.get("EOS_FUZZ_EXAMPLES", "30"))


def seed() -> str:
    """A fresh database with users, a trained run and queued ones; returns the fuzzer's token."""
    engine = fresh_engine(DATABASE)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    spec = tiny_spec(steps=40)
    result = train(RunSpec.model_validate(spec))
    with sessions.begin() as session:
        other, _ = queries.create_user(session=session, name="other")
        for _ in range(40):  # the fuzzer's own token gets a high id, out of reach of the ids it tries
            queries.issue_token(session=session, user=other)  # (revoking it would turn the run into 401s)
        user, token = queries.create_user(session=session, name="fuzzer")
        trained = queries.create_experiment(
            session=session, owner=user, spec=spec, sweep={"seed": [0, 1, 2]}, name="seeded", tags=["fuzz"]
        )
        queries.create_experiment(session=session, owner=other, spec=spec, name="another user's")
        session.flush()
        run = queries.list_runs(session=session, experiment_id=trained.id)[0]
        chunk = {name: np.asarray(column) for name, column in result.trace.items()}
        append_trace(session=session, run_id=run.id, chunk=chunk)
        run.status = "running"  # as if a worker had trained it
        lifecycle.finish(
            session=session, run=run, status=lifecycle.RunStatus.COMPLETED, summary=result.summary.to_json()
        )
        for kind, step, details in queries.summary_events(result.summary):
            queries.add_event(session=session, run_id=run.id, kind=kind, step=step, details=details)
    engine.dispose()
    return token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, token) of `tests.api.fuzz_server` under uvicorn, stopped afterwards."""
    token = seed()
    port = free_port()
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    env = {**os.environ, "EOS_DATABASE_URL": database_url(DATABASE), "EOS_BROKER_URL": REDIS_URL}
    command = [sys.executable, "-m", "uvicorn", "tests.api.fuzz_server:create", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_every_operation_survives_schemathesis(server: tuple[str, str], tmp_path: Path) -> None:
    url, token = server
    report = tmp_path / "report.json"
    st = Path(sys.executable).with_name("st")
    command = [str(st), "--config-file", str(CONFIG), "--no-color", "run", f"{url}/api/v1/openapi.json"]
    command += ["--header", f"Authorization: Bearer {token}", "--checks", "all"]
    command += ["--max-examples", str(EXAMPLES), "--generation-deterministic", "--workers", "1"]
    command += ["--continue-on-failure", "--request-timeout", "30", "--suppress-health-check", "all"]
    command += ["--report", "json", "--report-json-path", str(report)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    summary = json.loads(report.read_text()) if report.exists() else {}
    cases = summary.get("test_cases", {})
    print(
        f"schemathesis: {cases.get('generated')} cases, {cases.get('with_failures')} failing, "
        f"{cases.get('unique_failures')} unique failures, {summary.get('operations', {}).get('tested')} operations "
        f"in {time.monotonic() - started:.0f} s"
    )
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-3000:]
    assert summary["operations"]["tested"] == summary["operations"]["total"] >= 14
