"""docker-compose.yml: there is no Docker engine here, so check what can be checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from eos_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _services() -> dict[str, dict[str, object]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_has_the_cluster_services() -> None:
    services = _services()
    assert {"postgres", "redis", "api", "worker-gpu", "flower"} <= set(services)
    gpu = services["worker-gpu"]
    assert gpu["command"] == ["eos", "worker", "--queue", "gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]  # type: ignore[index]
    assert devices[0]["capabilities"] == ["gpu"]


def test_every_eos_command_in_compose_exists() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name, service in _services().items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "eos":
            assert command[1] in commands, (name, command)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_file_validates() -> None:
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_image_copies_every_package_the_project_installs() -> None:
    """`pip install -e .` in the image finds only what was copied: every package must be there."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and len(line.split()) == 3
    }
    assert packages and set(packages) <= copied, set(packages) - copied
