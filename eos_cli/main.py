"""`eos`: run experiments locally, and run the service's processes.

    eos run SPEC [--sweep optimizer.lr=1,10,100]   train now, in this process (embedded store)
    eos db upgrade                                 bring the database to the head revision
    eos users create NAME [--admin]                print a new user's API token (once)
    eos serve | eos worker --queue gpu|cpu | eos reaper

Exit codes: 0 success, 1 a run failed or diverged (with --strict), 2 bad input.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from eos_core.sweep import SweepError

from .summary import print_runs

app = typer.Typer(
    help="eos: SGD at the edge of stability, instrumented.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users and API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
console = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="database URL or SQLite file (default: EOS_DATABASE_URL or ~/.eos/eos.sqlite)"),
]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="the run spec, YAML or JSON")],
    sweep: Annotated[list[str] | None, typer.Option("--sweep", "-s", help="PATH=V1,V2,... (repeatable)")] = None,
    db: DbOption = None,
    steps: Annotated[int | None, typer.Option(help="override optimizer.steps")] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 unless every run completed")] = False,
) -> None:
    """Train SPEC (or a sweep of it) now, in this process, into the embedded store."""
    from eos_client import InputError, load_spec, parse_sweep
    from store import queries
    from store.db import database_url, make_engine, session_factory, upgrade
    from worker.executors import InProcessExecutor

    try:
        data, grid = load_spec(spec), parse_sweep(sweep)
    except InputError as exc:
        _fail(str(exc))
    if steps is not None:
        data.setdefault("optimizer", {})["steps"] = steps
    engine = make_engine(database_url(db))
    upgrade(engine)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            owner = queries.local_user(session=session)
            experiment = queries.create_experiment(session=session, owner=owner, spec=data, sweep=grid)
            run_ids = [r.id for r in queries.list_runs(session=session, experiment_id=experiment.id)]
            experiment_id = experiment.id
    except (ValidationError, SweepError) as exc:
        _fail(f"{spec}: {exc}")
    console.print(f"experiment {experiment_id}: {len(run_ids)} run(s) into {engine.url.render_as_string()}")
    executor = InProcessExecutor(sessions, heartbeat_seconds=1.0)
    for run_id in run_ids:
        _run_with_bar(run_id, executor)
    with sessions.begin() as session:
        rows = [_row(r) for r in queries.list_runs(session=session, experiment_id=experiment_id)]
    print_runs(rows, title=f"experiment {experiment_id}", console=console)
    if strict and any(r["status"] != "completed" for r in rows):
        raise typer.Exit(1)


def _run_with_bar(run_id: int, executor: Any) -> None:
    columns = (TextColumn(f"run {run_id}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=None)

        def progress(step: int, steps: int) -> None:
            bar.update(task, completed=step, total=steps)

        started = time.perf_counter()
        status = executor.execute(run_id, progress=progress)
    console.print(f"run {run_id}: {status} in {time.perf_counter() - started:.1f} s")


def _row(run: Any) -> dict[str, Any]:
    return {"id": run.id, "params": run.params, "status": run.status, "summary": run.summary}


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply the Alembic migrations up to the head revision."""
    from store.db import database_url, upgrade

    url = database_url(db)
    upgrade(url)
    console.print(f"database at head: {url.split('@')[-1]}")


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="user name")],
    admin: Annotated[bool, typer.Option("--admin", help="may cancel and delete anyone's runs")] = False,
    db: DbOption = None,
) -> None:
    """Create a user and print their API token. It is shown once and stored hashed."""
    from store import queries
    from store.db import database_url, make_engine, session_factory, verify_schema

    engine = make_engine(database_url(db))
    verify_schema(engine)
    try:
        with session_factory(engine).begin() as session:
            _, token = queries.create_user(session=session, name=name, is_admin=admin)
    except queries.Conflict as exc:
        _fail(str(exc))
    console.print(token)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the REST API with uvicorn (settings from EOS_* variables; OpenAPI at /docs)."""
    from api.__main__ import serve as serve_api

    serve_api(host, port, workers)


@app.command()
def worker(
    queue: Annotated[str, typer.Option(help="gpu or cpu")] = "cpu",
    name: Annotated[str | None, typer.Option(help="worker node name")] = None,
    beat: Annotated[bool, typer.Option(help="also run the reaper on a schedule (Celery beat)")] = False,
) -> None:
    """A Celery worker for one queue: solo pool, one run at a time, nothing forked after CUDA."""
    if queue not in ("gpu", "cpu"):
        _fail("--queue must be gpu or cpu")
    from store.db import database_url, make_engine, verify_schema
    from worker.celery_app import app as celery_app
    from worker.settings import WorkerSettings

    verify_schema(make_engine(WorkerSettings().database_url or database_url()))
    argv = [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={queue}",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if name:
        argv.append(f"--hostname={name}")
    if beat:
        argv.append("--beat")
    celery_app.worker_main(argv)


@app.command()
def reaper(
    once: Annotated[bool, typer.Option(help="one pass, then exit")] = False,
) -> None:
    """Requeue runs whose worker died or whose broker message was lost."""
    from store.db import database_url, make_engine, session_factory, verify_schema
    from worker.reaper import reap, reap_forever
    from worker.settings import WorkerSettings

    settings = WorkerSettings()
    engine = make_engine(settings.database_url or database_url())
    verify_schema(engine)
    sessions = session_factory(engine)

    def report(outcome: dict[str, list[int]]) -> None:
        if outcome["requeued"] or outcome["failed"] or once:
            console.print(f"requeued {outcome['requeued']}, failed {outcome['failed']}")

    if once:
        report(reap(sessions, settings))
        return
    console.print(f"reaper: a pass every {settings.reap_every:g} s, stale after {settings.stale_seconds:g} s")
    reap_forever(sessions, settings, report)


from .client_commands import register  # noqa: E402  (the client commands: submit, status, watch, runs, ...)

register(app)

from .figures import register as register_figures  # noqa: E402  (eos figures paper)

register_figures(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
