"""`eos run --sweep` and `eos figures paper` train through sweep slices (issue 10, items 2 and 5):
the runs that differ only in step size go to one eos_core.train_slice call, and `--sequential`
(or EOS_SLICE_RUNS=1) trains them one at a time, for the wall time to be compared."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import worker.runner
from eos_cli.figures import plan_figures
from eos_cli.main import app
from eos_client import Client
from eos_core.training import train_slice as real_train_slice

from .test_client_commands import write_spec

runner = CliRunner()


@pytest.fixture(autouse=True)
def local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EOS_URL", "EOS_TOKEN", "EOS_SLICE_RUNS", "EOS_SLICE_MEMORY_GIB", "EOS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """The step sizes of the runs in each train_slice call the commands make."""
    made: list[list[float]] = []

    def spy(specs: Sequence[Any], sinks: Any = None, progress: Any = None, **kwargs: Any) -> Any:
        made.append([s.optimizer.lr for s in specs])
        return real_train_slice(specs, sinks, progress, **kwargs)

    monkeypatch.setattr(worker.runner, "train_slice", spy)
    return made


def eos(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_eos_run_trains_a_sweep_as_one_slice_with_a_bar_per_run(tmp_path: Path, calls: list[list[float]]) -> None:
    db = tmp_path / "eos.sqlite"
    result = eos("run", write_spec(tmp_path / "spec.yaml"), "--sweep", "optimizer.lr=0.5,1,2", "--db", db)
    assert result.exit_code == 0, result.output
    assert calls == [[0.5, 1.0, 2.0]]
    out = one_line(result.stdout)
    assert "experiment 1: 3 run(s) in 1 slice(s)" in out
    for run_id in (1, 2, 3):
        assert f"run {run_id}: completed in " in out and f"run {run_id} lr=" in out  # its line and its bar
    assert out.count("(a slice of 3 runs)") == 3
    with Client.local(db, create=False) as client:
        runs = client.list_runs(1)
        assert [r.status for r in runs] == ["completed"] * 3
        assert all(len(client.trace(r.id, "loss")) == 61 for r in runs)  # one row per step, each its own


def test_eos_run_trains_one_run_at_a_time_with_eos_slice_runs_1(
    tmp_path: Path, calls: list[list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EOS_SLICE_RUNS", "1")
    result = eos("run", write_spec(tmp_path / "spec.yaml"), "--sweep", "optimizer.lr=0.5,2", "--db", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert calls == [[0.5], [2.0]]
    assert "slice" not in result.stdout and "run 2: completed in " in result.stdout


def test_eos_figures_trains_each_grid_as_slices_and_reports_the_wall_time(
    tmp_path: Path, calls: list[list[float]]
) -> None:
    (plan,) = plan_figures("tiny", ["fig4"])
    lrs = list(plan.lrs)
    sliced = eos(
        "figures", "paper", "--out", tmp_path / "a", "--db", tmp_path / "a.sqlite", "--scale", "tiny", "--only", "fig4"
    )
    assert sliced.exit_code == 0, sliced.output
    assert calls == [lrs] * len(plan.batch_sizes)  # one slice per batch size, all step sizes in each
    out = one_line(sliced.stdout)
    assert f"{len(plan.cells())} trained in {len(plan.batch_sizes)} slice(s), training " in out
    assert "training wall time (sliced; runs reused from the store are not timed)" in out
    row = re.search(r"fig4\W+(\d+)\W+(\d+)\W+([\d.]+)\W+([\d.]+)", out)  # the table: runs, slices, s, s per run
    assert row is not None and row.groups()[:2] == (str(len(plan.cells())), str(len(plan.batch_sizes)))

    calls.clear()
    sequential = eos(
        "figures", "paper", "--out", tmp_path / "b", "--db", tmp_path / "b.sqlite", "--scale", "tiny", "--only", "fig4",
        "--sequential",
    )  # fmt: skip
    assert sequential.exit_code == 0, sequential.output
    assert calls == [[lr] for _ in plan.batch_sizes for lr in lrs]  # one run per call
    out = one_line(sequential.stdout)
    assert f"{len(plan.cells())} trained one at a time, training " in out
    assert "training wall time (sequential;" in out

    calls.clear()  # a third time on the first store: everything is reused, nothing trained or timed
    again = eos(
        "figures", "paper", "--out", tmp_path / "a", "--db", tmp_path / "a.sqlite", "--scale", "tiny", "--only", "fig4"
    )
    assert again.exit_code == 0 and calls == []
    assert re.search(r"fig4\W+0\W+-\W+0\.0\W+-", one_line(again.stdout))  # the table: nothing trained
