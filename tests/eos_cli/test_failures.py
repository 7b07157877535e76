"""No silent failures from the command line: why a run failed (`eos run`, `eos runs`, `eos submit`,
`eos watch`), read commands refusing a store that does not exist, `eos watch` in a pipe, and the start-up
and actions of `eos reaper` and `eos worker` in the log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import worker.runner
from eos_cli.main import _configure_logging, app, redact
from eos_client import Client
from tests.eos_client.support import FAILURE, failing_train

from .test_client_commands import write_spec

runner = CliRunner()
MISSING = "eos_core.data.files.DatasetFilesMissing: mnist: the dataset files were not found"


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOS_URL", raising=False)
    monkeypatch.delenv("EOS_TOKEN", raising=False)


def eos(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_eos_run_says_why_a_run_failed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOS_DATA_DIR", str(tmp_path))  # no MNIST files there: the run fails when it loads them
    db = tmp_path / "eos.sqlite"
    result = eos("run", write_spec(tmp_path / "mnist.yaml", dataset__kind="mnist"), "--db", db)
    assert result.exit_code == 0, result.output
    assert "run 1: failed at step 0 of 60 in " in result.stdout
    assert MISSING in one_line(result.stdout)
    assert "run 1 failed at step 0 of 60: " + MISSING in one_line(result.stdout)  # beneath the table
    strict = eos("run", write_spec(tmp_path / "mnist.yaml", dataset__kind="mnist"), "--db", db, "--strict")
    assert strict.exit_code == 1


def test_a_run_failing_half_way_is_explained_by_run_runs_watch_and_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.runner, "train_slice", failing_train(20))
    db = tmp_path / "eos.sqlite"
    ran = eos("run", write_spec(tmp_path / "spec.yaml"), "--db", db)
    assert ran.exit_code == 0, ran.output
    with Client.local(db, create=False) as client:
        failed = client.run(1)
    assert failed.status == "failed" and 20 <= failed.step < 60 and failed.error == FAILURE
    why = f"failed at step {failed.step} of 60: {FAILURE}"
    assert f"run 1: failed at step {failed.step} of 60 in " in ran.stdout and f"  {FAILURE}" in ran.stdout

    listed = eos("runs", "1", "--db", db)
    assert listed.exit_code == 0, listed.output
    assert f"run 1 {why}" in one_line(listed.stdout)

    watched = eos("watch", "1", "--db", db)  # not a terminal: lines, then the table
    assert watched.exit_code == 1
    assert f"run 1: {why}" in watched.stdout and "not completed: run 1 failed" in watched.stderr

    submitted = eos("submit", write_spec(tmp_path / "spec.yaml"), "--sweep", "optimizer.lr=0.5,2", "--db", db)
    assert submitted.exit_code == 1
    for run_id in (2, 3):
        assert f"run {run_id} lr=" in submitted.stdout
        assert f"failed at step {failed.step} of 60: {FAILURE}" in submitted.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--active"],
        ["runs", "1"],
        ["trace", "1"],
        ["compare", "1"],
        ["plot", "1", "-o", "x.png"],
        ["cancel", "1"],
        ["watch"],
        ["watch", "1"],
    ],
)
def test_read_commands_refuse_a_store_that_does_not_exist(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = tmp_path / "typo" / "eos.sqlite"
    result = eos(*command, "--db", typo)
    assert result.exit_code == 2, result.output
    assert f"no eos store at {typo}: the file does not exist" in one_line(result.stderr)
    assert not typo.parent.exists()  # nothing created, not even the folder
    monkeypatch.setenv("EOS_DATABASE_URL", f"sqlite:///{typo}")  # the same without --db
    assert eos(*command).exit_code == 2 and not typo.exists()


def test_submit_and_run_still_create_the_store(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "eos.sqlite"
    assert eos("submit", write_spec(tmp_path / "spec.yaml"), "--db", fresh).exit_code == 0
    assert fresh.is_file() and eos("runs", "1", "--db", fresh).exit_code == 0
    other = tmp_path / "other.sqlite"
    assert eos("run", write_spec(tmp_path / "spec.yaml"), "--db", other).exit_code == 0 and other.is_file()


def test_watch_in_a_pipe_prints_one_line_per_change(tmp_path: Path) -> None:
    """A run left queued in the store trains under `eos watch`; stdout is not a terminal."""
    from store import queries
    from store.db import make_engine, session_factory, upgrade
    from tests.eos_client.support import tiny_spec

    db = tmp_path / "eos.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    with session_factory(engine).begin() as session:
        owner = queries.local_user(session=session)
        queries.create_experiment(session=session, owner=owner, spec=tiny_spec(steps=400))
    engine.dispose()
    result = eos("watch", "1", "--db", db, "--poll", "0.05")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("run 1: ")]
    assert lines[0] in ("run 1: queued 0/400", "run 1: running 0/400") and lines[-1] == "run 1: completed 400/400"
    assert len(lines) == len(set(lines)) <= 13  # each line a change: a status, or another tenth of the steps


@pytest.fixture
def root_logging() -> Any:
    """The root logger's handlers and level, restored after the test (the commands configure logging)."""
    root, alembic = logging.getLogger(), logging.getLogger("alembic")
    handlers, level, alembic_level = list(root.handlers), root.level, alembic.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    alembic.setLevel(alembic_level)


def test_logging_is_configured_when_nothing_else_did(root_logging: logging.Logger) -> None:
    root_logging.handlers[:] = []
    _configure_logging()
    assert root_logging.level == logging.INFO
    assert [type(h) for h in root_logging.handlers] == [logging.StreamHandler]
    _configure_logging()
    assert len(root_logging.handlers) == 1  # once


def test_urls_are_logged_without_their_password() -> None:
    assert redact("redis://:s3cret@broker:6379/0") == "redis://:***@broker:6379/0"
    assert redact("postgresql+psycopg://eos:pw@db:5432/eos") == "postgresql+psycopg://eos:***@db:5432/eos"
    assert redact("sqlite:////tmp/x.sqlite") == "sqlite:////tmp/x.sqlite"


def upgraded(path: Path) -> str:
    from store.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return f"sqlite:///{path}"


def test_reaper_logs_its_settings_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, root_logging: logging.Logger
) -> None:
    monkeypatch.setenv("EOS_DATABASE_URL", upgraded(tmp_path / "eos.sqlite"))
    monkeypatch.setenv("EOS_BROKER_URL", "redis://:s3cret@127.0.0.1:6379/0")
    monkeypatch.setenv("EOS_STALE_SECONDS", "45")
    with caplog.at_level(logging.INFO):
        result = eos("reaper", "--once")
    assert result.exit_code == 0, result.output
    assert "requeued [], failed []" in result.stdout
    started = one_line(caplog.text)
    assert "eos reaper starting: one pass, broker redis://:***@127.0.0.1:6379/0" in started
    assert f"database sqlite:///{tmp_path / 'eos.sqlite'}" in started
    assert "stale after 45 s" in started and "3 attempts per run" in started
    assert "s3cret" not in caplog.text + result.output


def test_reaper_logs_each_action_and_the_run_says_why_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, root_logging: logging.Logger
) -> None:
    """A run whose worker went silent on its last attempt: the reaper fails it, logs it, and `eos runs` says why."""
    from datetime import timedelta

    from store import queries
    from store.db import make_engine, session_factory
    from tests.eos_client.support import tiny_spec

    db = tmp_path / "eos.sqlite"
    engine = make_engine(upgraded(db))
    with session_factory(engine).begin() as session:
        owner = queries.local_user(session=session)
        experiment = queries.create_experiment(session=session, owner=owner, spec=tiny_spec())
        (run,) = queries.list_runs(session=session, experiment_id=experiment.id)
        run.status, run.attempts, run.step = "running", 3, 17
        run.heartbeat_at = queries.now() - timedelta(hours=1)
    engine.dispose()
    monkeypatch.setenv("EOS_DATABASE_URL", f"sqlite:///{db}")
    with caplog.at_level(logging.INFO):
        result = eos("reaper", "--once")
    assert result.exit_code == 0, result.output
    assert "requeued [], failed [1]" in result.stdout
    assert "reaper: run 1 failed: gave up after 3 attempts (worker lost each time)" in caplog.messages
    listed = eos("runs", "1", "--db", db)
    assert "run 1 failed at step 17 of 60: gave up after 3 attempts (worker lost each time)" in one_line(listed.stdout)


def test_worker_logs_its_settings_and_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, root_logging: logging.Logger
) -> None:
    from celery import signals

    from worker.celery_app import app as celery_app
    from worker.tasks import reap_task, run_task

    argv: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", argv.append)
    monkeypatch.setenv("EOS_DATABASE_URL", upgraded(tmp_path / "eos.sqlite"))
    monkeypatch.setenv("EOS_BROKER_URL", "redis://:s3cret@127.0.0.1:6379/0")
    with caplog.at_level(logging.INFO):
        result = eos("worker", "--queue", "cpu", "--beat")
        assert result.exit_code == 0, result.output
        assert argv and "--queues=cpu" in argv[0] and "--beat" in argv[0]
        started = one_line(caplog.text)
        assert "eos worker starting: queue cpu, broker redis://:***@127.0.0.1:6379/0" in started
        assert "heartbeat every 5 s, stale after 30 s, reaper (beat) every 15 s" in started
        assert "s3cret" not in caplog.text
        # What the worker logs around each run task (Celery's own lines name the task id only).
        caplog.clear()
        signals.task_prerun.send(sender=run_task, task_id="t-1", task=run_task, args=[7], kwargs={})
        signals.task_postrun.send(
            sender=run_task, task_id="t-1", task=run_task, args=[7], kwargs={}, retval="failed", state="SUCCESS"
        )
        signals.task_postrun.send(sender=reap_task, task_id="t-2", task=reap_task, args=[], kwargs={}, retval={})
        assert caplog.messages == ["run 7: starting (task t-1)", "run 7: failed"]
        eos("worker", "--queue", "cpu")  # a second start connects its handlers once
        caplog.clear()
        signals.task_prerun.send(sender=run_task, task_id="t-3", task=run_task, args=[8], kwargs={})
        assert caplog.messages == ["run 8: starting (task t-3)"]


def test_eos_run_sweeps_a_whole_sub_object_merged_into_the_base(tmp_path: Path) -> None:
    db = tmp_path / "eos.sqlite"
    spec = write_spec(tmp_path / "spec.yaml", optimizer__steps=9)
    result = eos("run", spec, "--sweep", "optimizer=[{lr: 2}, {lr: 3, batch_size: 2}]", "--db", db)
    assert result.exit_code == 0, result.output
    assert "lr=2 " in result.stdout and "lr=3, batch_size=2" in result.stdout
    with Client.local(db, create=False) as client:
        runs = client.list_runs(1)
    assert [r.spec["optimizer"]["steps"] for r in runs] == [9, 9]  # the base's steps stay
    assert [(r.spec["optimizer"]["lr"], r.spec["optimizer"]["batch_size"]) for r in runs] == [(2, 4), (3, 2)]
    overlap = eos("run", spec, "--sweep", "optimizer=[{lr: 2}]", "--sweep", "optimizer.lr=1", "--db", db)
    assert overlap.exit_code == 2 and "overlap" in one_line(overlap.stderr)
