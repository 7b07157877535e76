"""`eos submit | status | watch | runs | trace | compare | plot | cancel` on an embedded store (CliRunner)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.image import imread
from typer.testing import CliRunner, Result

from eos_cli.client_commands import COMMANDS
from eos_cli.main import app
from eos_client import Client
from tests.eos_client.support import tiny_spec

runner = CliRunner()
OTHER_COMMANDS = (["run"], ["db", "upgrade"], ["users", "create"], ["serve"], ["worker"], ["reaper"])


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOS_URL", raising=False)
    monkeypatch.delenv("EOS_TOKEN", raising=False)


def eos(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def write_spec(path: Path, **changes: object) -> Path:
    spec = tiny_spec()
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        spec[section][field] = value
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An embedded store holding experiment 1: a two-run sweep submitted (and trained) through `eos submit`."""
    folder = tmp_path_factory.mktemp("cli")
    db = folder / "eos.sqlite"
    result = eos("submit", write_spec(folder / "spec.yaml"), "--sweep", "optimizer.lr=0.5,2", "--db", db)
    assert result.exit_code == 0, result.output
    assert "experiment 1: 2 run(s)" in result.stdout
    assert "lr=0.5" in result.stdout and "lr=2" in result.stdout and result.stdout.count("completed") >= 2
    yield db


@pytest.mark.parametrize("command", [c.__name__ for c in COMMANDS])
def test_client_commands_have_help_with_exit_codes(command: str) -> None:
    result = eos(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Exit codes" in result.stdout and "--url" in result.stdout


@pytest.mark.parametrize("command", [[], *OTHER_COMMANDS])
def test_other_commands_have_help(command: list[str]) -> None:
    assert eos(*command, "--help").exit_code == 0


def test_runs_prints_the_table_and_writes_csv(store: Path, tmp_path: Path) -> None:
    result = eos("runs", "1", "--db", store, "--csv", tmp_path / "runs.csv")
    assert result.exit_code == 0, result.output
    assert "final loss" in result.stdout and "lr=2" in result.stdout
    frame = pd.read_csv(tmp_path / "runs.csv")
    assert list(frame["optimizer.lr"]) == [0.5, 2.0] and list(frame["run"]) == [1, 2]


def test_trace_files_hold_every_step(store: Path, tmp_path: Path) -> None:
    with Client.local(store) as client:
        expected = client.trace(2)
    for flag, name in (("--csv", "t.csv"), ("--parquet", "t.parquet")):
        result = eos("trace", "2", flag, tmp_path / name, "--db", store)
        assert result.exit_code == 0, result.output
    csv = pd.read_csv(tmp_path / "t.csv")  # pandas >= 3 reads the shortest round-trip floats exactly
    parquet = pd.read_parquet(tmp_path / "t.parquet")
    for frame in (csv, parquet):
        assert list(frame.columns) == list(expected.columns[1:]) and len(frame) == 61
        np.testing.assert_array_equal(frame["loss"].to_numpy(), expected["loss"].to_numpy())
        np.testing.assert_array_equal(frame["drift"].to_numpy(), expected["drift"].to_numpy())


def test_trace_table_and_metric_choice(store: Path, tmp_path: Path) -> None:
    shown = eos("trace", "1", "-m", "loss,sharpness", "--max-points", "5", "--db", store)
    assert shown.exit_code == 0, shown.output
    assert "sharpness" in shown.stdout and "drift" not in shown.stdout
    eos("trace", "1", "-m", "loss", "--csv", tmp_path / "loss.csv", "--db", store)
    assert list(pd.read_csv(tmp_path / "loss.csv").columns) == ["step", "loss"]
    both = eos("trace", "1", "--csv", tmp_path / "a.csv", "--parquet", tmp_path / "b.parquet", "--db", store)
    assert both.exit_code == 2 and not (tmp_path / "a.csv").exists()


def test_plot_writes_a_png(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs.png"
    result = eos("plot", "1", "2", "-o", out, "--db", store)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    pixels = imread(out)
    assert pixels.shape[:2] == (990, 880) and pixels[..., :3].std() > 0.05  # 8x9 inches at 110 dpi, not blank


def test_compare_status_and_cancel(store: Path) -> None:
    compared = eos("compare", "1", "2", "--db", store)
    assert compared.exit_code == 0, compared.output
    assert "optimizer.lr" in compared.stdout and "run 2" in compared.stdout
    assert "κ_B of experiment 1, per batch size" in compared.stdout  # pooled over the experiment's runs
    status = eos("status", "--db", store)
    assert status.exit_code == 0 and "2 completed" in status.stdout
    active = eos("status", "--active", "--db", store)
    assert active.exit_code == 0 and "completed" not in active.stdout
    cancelled = eos("cancel", "1", "--db", store)
    assert cancelled.exit_code == 1 and "already completed" in cancelled.stderr
    idle = eos("watch", "--db", store)
    assert idle.exit_code == 0 and "nothing queued or running" in idle.stdout


def test_bad_input_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "eos.sqlite"
    invalid = eos("submit", write_spec(tmp_path / "bad.yaml", optimizer__lr=-1), "--db", db)
    assert invalid.exit_code == 2 and "optimizer.lr" in invalid.stderr
    missing = eos("submit", tmp_path / "nope.yaml", "--db", db)
    assert missing.exit_code == 2 and "cannot read spec file" in missing.stderr
    sweep = eos("submit", write_spec(tmp_path / "ok.yaml"), "--sweep", "optimizer.lr", "--db", db)
    assert sweep.exit_code == 2 and "PATH=V1,V2" in sweep.stderr
    both = eos("status", "--db", db, "--url", "http://127.0.0.1:1")
    assert both.exit_code == 2


def test_unknown_ids_exit_3(store: Path) -> None:
    for args in (["trace", "99"], ["runs", "99"], ["cancel", "99"], ["plot", "99", "-o", "x.png"], ["watch", "99"]):
        result = eos(*args, "--db", store)
        assert result.exit_code == 3, (args, result.output)


def test_a_failed_run_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOS_DATA_DIR", str(tmp_path))  # no MNIST files there: the run fails when it loads them
    spec = write_spec(tmp_path / "mnist.yaml", dataset__kind="mnist")
    result = eos("submit", spec, "--db", tmp_path / "eos.sqlite")
    assert result.exit_code == 1, result.output
    assert "run 1 failed" in result.stderr


def test_dry_run_prints_each_runs_estimate_and_submits_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.yaml")
    store = tmp_path / "eos.sqlite"
    result = eos("submit", spec, "--sweep", "optimizer.steps=60,120", "--dry-run", "--db", store)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())  # the table wraps to the terminal's width
    assert "2 run(s), estimated; nothing submitted" in shown
    assert "steps=60" in shown and "steps=120" in shown
    assert not store.exists()  # nothing submitted, no store created
    bad = eos("submit", spec, "--sweep", "optimizer.nope=1", "--dry-run")
    assert bad.exit_code == 2 and "nope" in bad.stderr


def test_a_run_waiting_for_a_worker_shows_it_in_the_status_column() -> None:
    from eos_cli.client_commands import _status, _workers_line
    from eos_client import Run

    waiting = Run(id=1, experiment_id=1, name="x", status="queued", queue="gpu", queue_served=False)
    assert _status(waiting) == "queued (gpu: no worker)"
    assert _status(Run(id=2, experiment_id=1, name="x", status="queued", queue="cpu", queue_served=True)) == "queued"
    line = _workers_line({"items": [{"queue": "cpu", "host": "a"}, {"queue": "cpu", "host": "b"}], "unserved": ["gpu"]})
    assert line.startswith("workers: cpu x2 (a, b)") and "no worker serves gpu" in line
