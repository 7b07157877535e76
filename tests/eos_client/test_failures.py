"""Failures explained by the client (Run.failure, the runs DataFrame, what wait prints), line updates when
not on a terminal, a missing store refused on request, and a sweep over a whole sub-object."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

import worker.runner
from eos_client import Client, InputError, Run, parse_sweep
from eos_client.progress import RunBars

from .support import FAILURE, failing_train, tiny_spec

MISSING = "eos_core.data.files.DatasetFilesMissing: mnist: the dataset files were not found"


def mnist_spec() -> dict[str, object]:
    spec = tiny_spec()
    spec["dataset"] = {"kind": "mnist"}
    return spec


def test_a_run_that_fails_at_once_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EOS_DATA_DIR", str(tmp_path))  # no MNIST files there: the run fails when it loads them
    with Client.local(tmp_path / "eos.sqlite") as client:
        experiment = client.submit(mnist_spec())
        capsys.readouterr()
        frame = client.wait(experiment, progress=True, timeout=60)  # stdout is not a terminal here: lines
        printed = capsys.readouterr().out
        run = client.run(experiment.run_ids[0])
    assert run.status == "failed" and run.step == 0 and run.error is not None and run.error.startswith(MISSING)
    assert run.failure == f"failed at step 0 of 60: {run.error}"
    assert str(run) == f"run {run.id}: failed at step 0 of 60: {run.error}"
    assert f"run {run.id}: failed at step 0 of 60: {MISSING}" in printed
    assert list(frame["status"]) == ["failed"] and list(frame["step"]) == [0]
    assert frame["error"][0] == run.error


def test_a_run_that_fails_half_way_keeps_the_step_it_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.runner, "train_slice", failing_train(20))
    with Client.local(tmp_path / "eos.sqlite") as client:
        experiment = client.submit(tiny_spec(chunk_rows=8), sweep={"optimizer.lr": [0.5, 2.0]})
        frame = client.wait(experiment, progress=False, timeout=60)
        runs = client.list_runs(experiment)
        trace = client.trace(experiment.run_ids[0], "loss")
    assert list(frame["status"]) == ["failed", "failed"] and list(frame["error"]) == [FAILURE, FAILURE]
    assert list(frame["step"]) == [r.step for r in runs] and all(20 <= r.step < 60 for r in runs)
    assert runs[0].failure == f"failed at step {runs[0].step} of 60: {FAILURE}"
    assert str(runs[1]) == f"run {runs[1].id} (lr=2.0): failed at step {runs[1].step} of 60: {FAILURE}"
    assert len(trace) >= 16  # the chunks handed over before the failure are kept


def run(status: str, step: int, steps: int = 100, error: str | None = None) -> Run:
    return Run(
        id=3, experiment_id=1, name="x", status=status, params={"optimizer.lr": 10}, step=step, steps=steps, error=error
    )


def test_without_a_terminal_each_change_is_one_line() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    states = [
        run("queued", 0),
        run("queued", 0),  # nothing changed: no line
        run("running", 5),
        run("running", 7),  # the same tenth of the steps: no line
        run("running", 15),
        run("failed", 18, error="ValueError: boom"),
        run("failed", 18, error="ValueError: boom"),
    ]
    with RunBars(console=console) as bars:
        for state in states:
            bars.update([state])
    assert out.getvalue().splitlines() == [
        "run 3 lr=10: queued 0/100",
        "run 3 lr=10: running 5/100",
        "run 3 lr=10: running 15/100",
        "run 3 lr=10: failed at step 18 of 100: ValueError: boom",
    ]


def test_on_a_terminal_the_bars_say_once_why_a_run_failed() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with RunBars(console=console) as bars:
        for state in (run("running", 5), run("failed", 18, error="ValueError: boom"), run("failed", 18, error="x")):
            bars.update([state])
    assert out.getvalue().count("run 3 lr=10: failed at step 18 of 100: ValueError: boom") == 1


def test_diverged_and_completed_runs() -> None:
    assert run("completed", 100).failure is None and run("running", 5).failure is None
    assert run("diverged", 40).failure == "diverged at step 40 (the iterate or its loss is no longer finite)"
    assert str(run("completed", 100)) == "run 3 (lr=10): completed, 100/100 steps"


def test_a_store_that_does_not_exist_is_refused_when_asked(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "eos.sqlite"
    with pytest.raises(InputError, match=r"no eos store at .*typo/eos\.sqlite: the file does not exist"):
        Client.local(missing, create=False)
    with pytest.raises(InputError, match="does not exist"):
        Client.local(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()  # nothing created, not even the folder
    with Client.local(missing) as client:  # the default: created
        assert client.experiments().empty
    with Client.local(missing, create=False) as client:
        assert client.experiments().empty


def test_a_sweep_over_a_whole_sub_object_merges_into_the_base(tmp_path: Path) -> None:
    with Client.local(tmp_path / "eos.sqlite") as client:
        experiment = client.submit(tiny_spec(steps=7), sweep={"optimizer": [{"lr": 2.0}, {"lr": 3.0, "batch_size": 2}]})
        frame = client.wait(experiment, progress=False, timeout=60)
        runs = client.list_runs(experiment)
    assert list(frame["status"]) == ["completed", "completed"]
    assert [r.spec["optimizer"]["steps"] for r in runs] == [7, 7]  # the base's, not the default 5000
    assert [(r.spec["optimizer"]["lr"], r.spec["optimizer"]["batch_size"]) for r in runs] == [(2.0, 4), (3.0, 2)]
    assert [r.steps for r in runs] == [7, 7] and runs[0].params == {"optimizer": {"lr": 2.0}}


def test_sweep_values_may_be_a_yaml_list_of_mappings() -> None:
    assert parse_sweep(["optimizer.lr=1,10"]) == {"optimizer.lr": [1, 10]}
    assert parse_sweep(["optimizer=[{lr: 1, batch_size: 8}, {lr: 10}]"]) == {
        "optimizer": [{"lr": 1, "batch_size": 8}, {"lr": 10}]
    }
    with pytest.raises(InputError, match="non-empty YAML list"):
        parse_sweep(["optimizer=[]"])
    with pytest.raises(InputError, match="not a valid YAML list"):
        parse_sweep(["optimizer=[{lr: 1"])
    swept = Run(id=1, experiment_id=1, name="x", status="queued", params={"optimizer": {"lr": 1, "batch_size": 8}})
    assert swept.label == "lr=1, batch_size=8"
