"""The README's "Running it" section, command by command, on this CPU-only machine: its runs
(device auto, the default) must complete, not wait forever on the gpu queue (issue 9 item 4).

The commands are read from the README itself; only the database (one per test session), the
port, the broker key prefix and the run length (steps 2000 -> 200, to stay short) differ."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..postgres import database_url, recreate_database, session_name
from .conftest import ROOT, wait_for, worker_env

pytestmark = pytest.mark.slow  # a server, a worker, the reaper and three runs

README = ROOT / "README.md"


def readme_commands() -> list[str]:
    section = README.read_text().split("### Running it", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_lists_the_commands_this_test_follows() -> None:
    commands = [line.split("#")[0].strip() for line in readme_commands()]
    assert [c.split()[0] for c in commands] == ["export", "eos", "eos", "eos", "eos", "eos", "curl"]
    assert "eos worker --queue cpu &" in commands and "eos reaper &" in commands


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_following_the_readme_on_a_cpu_only_machine_completes_the_runs(
    tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    name = session_name("eos_test_readme")
    recreate_database(name)
    port = _free_port()
    env = {**worker_env(), "EOS_DATABASE_URL": database_url(name), "EOS_STALE_SECONDS": "30"}
    token, body = "", {}
    for line in readme_commands():
        command = line.split("#")[0].strip()
        if command.startswith("export "):
            continue  # EOS_DATABASE_URL: this session's database instead
        if command.startswith("curl "):
            body = json.loads(re.search(r"-d '(.*?)'", command).group(1))  # type: ignore[union-attr]
            continue
        argv = shlex.split(command.rstrip("&").strip())
        if argv[:2] == ["eos", "serve"]:  # a free port instead of 8000
            argv = [*argv[: argv.index("--port") + 1], str(port), *argv[argv.index("--port") + 2 :]]
        process = [sys.executable, "-m", "eos_cli.main", *argv[1:]]
        if command.endswith("&"):
            log = (tmp_path / f"{argv[1]}.log").open("wb")
            background.append(subprocess.Popen(process, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        else:
            done = subprocess.run(process, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            token = done.stdout.strip().splitlines()[-1] if argv[1] == "users" else token
    assert token.startswith("eos_") and body
    body["spec"]["optimizer"]["steps"] = 200  # the README's 2000, shortened
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"})
    wait_for(lambda: _served(api, "cpu"), 90, "the API up and the cpu worker registered")
    created = api.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    assert {r["queue"] for r in created.json()["runs"]} == {"cpu"} and created.json()["warnings"] == []
    experiment = created.json()["id"]

    def completed() -> bool:
        runs = api.get(f"/experiments/{experiment}").json()["runs"]
        return all(r["status"] == "completed" for r in runs)

    wait_for(completed, 300, "the README's runs to complete")


def _served(api: httpx.Client, queue: str) -> bool:
    try:
        return queue in api.get("/workers").json()["served"]
    except (httpx.HTTPError, KeyError):
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
