"""`eos`: run experiments locally, and run the service's processes.

    eos run SPEC [--sweep optimizer.lr=1,10,100]   train now, in this process (embedded store)
    eos db upgrade                                 bring the database to the head revision
    eos users create NAME [--admin]                print a new user's API token (once)
    eos token create|list|revoke|rotate            a user's API tokens: expiry, revocation
    eos serve | eos worker --queue gpu|cpu | eos reaper

Exit codes: 0 success, 1 a run failed or diverged (with --strict), 2 bad input.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from eos_core.sweep import SweepError

from .summary import print_runs

app = typer.Typer(
    help="eos: SGD at the edge of stability, instrumented.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users and API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
token_app = typer.Typer(help="API tokens: create (shown once), list, revoke, rotate.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(token_app, name="token")
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
    """Train SPEC (or a sweep of it) now, in this process, into the embedded store.

    The runs of a sweep that differ only in step size and seed train together, as slices
    (at most EOS_SLICE_RUNS runs and EOS_SLICE_MEMORY_GIB each, as on a worker)."""
    from eos_client import InputError, load_spec, parse_sweep
    from eos_client.local import local_engine
    from eos_client.models import params_label
    from store import queries
    from store.db import database_url, session_factory, upgrade
    from worker.executors import InProcessExecutor

    from .slices import slice_note, train_with_bars

    try:
        data, grid = load_spec(spec), parse_sweep(sweep)
    except InputError as exc:
        _fail(str(exc))
    if steps is not None:
        data.setdefault("optimizer", {})["steps"] = steps
    # BEGIN IMMEDIATE on SQLite: the heartbeat threads of a slice's runs write at once.
    engine = local_engine(database_url(db))
    upgrade(engine)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            owner = queries.local_user(session=session)
            experiment = queries.create_experiment(session=session, owner=owner, spec=data, sweep=grid)
            runs = queries.list_runs(session=session, experiment_id=experiment.id)
            labels = {r.id: " ".join(filter(None, (f"run {r.id}", params_label(r.params)))) for r in runs}
            experiment_id = experiment.id
    except (ValidationError, SweepError) as exc:
        _fail(f"{spec}: {exc}")
    executor = InProcessExecutor(sessions, heartbeat_seconds=1.0)
    groups = executor.plan(list(labels))
    sliced = f" in {len(groups)} slice(s)" if len(groups) < len(labels) else ""
    console.print(f"experiment {experiment_id}: {len(labels)} run(s){sliced} into {engine.url.render_as_string()}")
    for group in groups:
        _, seconds = train_with_bars(executor, group, labels, console)
        with sessions() as session:
            for run_id in group:
                _print_outcome(_row(queries.get_run(session=session, run_id=run_id)), slice_note(len(group), seconds))
    with sessions.begin() as session:
        rows = [_row(r) for r in queries.list_runs(session=session, experiment_id=experiment_id)]
    print_runs(rows, title=f"experiment {experiment_id}", console=console)
    if strict and any(r["status"] != "completed" for r in rows):
        raise typer.Exit(1)


def _print_outcome(row: dict[str, Any], when: str) -> None:
    """'run 1: completed in 2.0 s', or 'run 1: failed at step 0 of 10 in 0.1 s' with the error beneath."""
    if not row["failure"]:
        console.print(f"run {row['id']}: {row['status']} {when}")
        return
    head, _, why = row["failure"].partition(": ")
    head = head.replace(" (", f" {when} (", 1) if "(" in head else f"{head} {when}"
    console.print(f"[red]run {row['id']}: {escape(head)}[/red]", highlight=False)
    if why:
        console.print(f"  {escape(why)}", soft_wrap=True, highlight=False)


def _row(run: Any) -> dict[str, Any]:
    from eos_client.models import failure_text

    summary = run.summary or {}
    failure = failure_text(run.status, run.step, run.steps, run.error, summary.get("diverged_step"))
    return {"id": run.id, "params": run.params, "status": run.status, "summary": run.summary, "failure": failure}


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply the Alembic migrations up to the head revision."""
    from store.db import database_url, upgrade

    url = database_url(db)
    upgrade(url)
    console.print(f"database at head: {url.split('@')[-1]}")


def _sessions(db: str | None) -> Any:
    """A session factory on the database, refusing one that is not at the head revision."""
    from store.db import database_url, make_engine, session_factory, verify_schema

    engine = make_engine(database_url(db))
    verify_schema(engine)
    return session_factory(engine)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="user name: 1 to 64 letters, digits, '.', '_' or '-'")],
    admin: Annotated[bool, typer.Option("--admin", help="may cancel and delete anyone's runs")] = False,
    db: DbOption = None,
) -> None:
    """Create a user and print their API token. It is shown once and stored hashed."""
    from store import queries

    try:
        queries.check_user_name(name)
        with _sessions(db).begin() as session:
            _, token = queries.create_user(session=session, name=name, is_admin=admin)
    except (queries.Conflict, queries.InvalidUserName) as exc:
        _fail(str(exc))
    console.print(token, soft_wrap=True)


ExpiresOption = Annotated[
    str | None,
    typer.Option(
        "--expires",
        help="when the token stops working: a duration (30d, 12h) or a UTC date or time (2027-01-31, "
        "2027-01-31T12:00); default: never",
    ),
]
TokenArgument = Annotated[str, typer.Argument(help="the token's id, or its prefix as `eos token list` shows it")]


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """`30d`, `12h`, `90m` from now, or an ISO date (midnight UTC) or date and time (UTC unless it says)."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return now + timedelta(**{unit: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30d, 12h, 90m) nor an ISO date or time", param_hint="--expires"
        ) from None
    from store.models import as_utc

    when = as_utc(when)
    if when <= now:
        raise typer.BadParameter(f"{text!r} is not in the future", param_hint="--expires")
    return when


def _find_token(session: Any, key: str) -> Any:
    """The token with id `key`, or whose prefix is `key` (it must name one token)."""
    from store import queries

    if key.isdigit():
        return queries.get_token(session=session, token_id=int(key))
    found = [t for t in queries.list_tokens(session=session) if t.prefix == key or t.prefix == key.rstrip(".")]
    if len(found) != 1:
        raise queries.NotFound(f"no token with prefix {key!r}" if not found else f"{key!r} names {len(found)} tokens")
    return found[0]


def _when(value: datetime | None) -> str:
    from store.models import as_utc

    return "never" if value is None else as_utc(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _announce(token: Any, user: str, secret: str) -> None:
    """The secret alone on stdout (for scripts); what it is on stderr."""
    err.print(
        f"token {token.id} ({token.prefix}...) of {escape(user)}, expires {_when(token.expires_at)}; "
        "shown once, stored hashed:"
    )
    console.print(secret, soft_wrap=True)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Argument(help="the user the token signs in as")],
    expires: ExpiresOption = None,
    db: DbOption = None,
) -> None:
    """Create another API token for USER and print it. It is shown once and stored hashed."""
    from store import queries

    expires_at = parse_expiry(expires)
    try:
        with _sessions(db).begin() as session:
            owner = queries.get_user(session=session, name=user)
            token, secret = queries.create_token(session=session, user=owner, expires_at=expires_at)
    except (queries.NotFound, queries.InvalidExpiry) as exc:
        _fail(str(exc))
    _announce(token, user, secret)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Argument(help="only this user's tokens (default: everyone's)")] = None,
    db: DbOption = None,
) -> None:
    """List tokens: id, user, prefix, created, expires and state. The secrets are never stored, so never shown."""
    from rich.table import Table

    from store import queries

    try:
        with _sessions(db).begin() as session:
            owner = queries.get_user(session=session, name=user) if user is not None else None
            rows = [
                (
                    str(t.id),
                    t.user.name,
                    f"{t.prefix}...",
                    _when(t.created_at),
                    _when(t.expires_at),
                    queries.token_state(t),
                )
                for t in queries.list_tokens(session=session, user=owner)
            ]
    except queries.NotFound as exc:
        _fail(str(exc))
    table = Table("id", "user", "prefix", "created", "expires", "state")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


@token_app.command("revoke")
def token_revoke(token: TokenArgument, db: DbOption = None) -> None:
    """Revoke a token: from now on every request with it gets 401."""
    from store import queries

    try:
        with _sessions(db).begin() as session:
            row = queries.revoke_token(session=session, token=_find_token(session, token))
            shown = f"revoked token {row.id} ({row.prefix}...) of {row.user.name}"
    except queries.NotFound as exc:
        _fail(str(exc))
    console.print(escape(shown))


@token_app.command("rotate")
def token_rotate(token: TokenArgument, expires: ExpiresOption = None, db: DbOption = None) -> None:
    """Revoke a token and print a new one for its user (shown once)."""
    from store import queries

    expires_at = parse_expiry(expires)
    try:
        with _sessions(db).begin() as session:
            old = _find_token(session, token)
            row, secret = queries.rotate_token(session=session, token=old, expires_at=expires_at)
            user = old.user.name
    except (queries.NotFound, queries.Conflict, queries.InvalidExpiry) as exc:
        _fail(str(exc))
    err.print(f"revoked token {old.id} ({old.prefix}...)")
    _announce(row, user, secret)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the REST API with uvicorn (settings from EOS_* variables; OpenAPI at /docs)."""
    from api.__main__ import serve as serve_api

    serve_api(host, port, workers)


LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"


def _configure_logging() -> logging.Logger:
    """INFO and above to stderr, with the time, unless the process configured logging already (the
    reaper's requeues and failures, the worker's runs); returns the `eos` logger the commands write to."""
    root = logging.getLogger()
    if not any(not isinstance(h, logging.NullHandler) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check's "Context impl ..." lines
    return logging.getLogger("eos")


def redact(url: str) -> str:
    """A URL with its password replaced by ***, as logs may show it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=user + host))


def _log_run_tasks(log: logging.Logger) -> None:
    """A line when a run task starts and when it ends, with the run id and its final status (Celery's
    own lines name the task id only)."""
    from celery import signals

    from worker.celery_app import RUN_TASK

    def started(task: Any = None, task_id: str | None = None, args: Any = (), **_: Any) -> None:
        if getattr(task, "name", None) == RUN_TASK and args:
            log.info("run %s: starting (task %s)", args[0], task_id)

    def ended(task: Any = None, args: Any = (), retval: Any = None, state: str | None = None, **_: Any) -> None:
        if getattr(task, "name", None) != RUN_TASK or not args:
            return
        if state == "SUCCESS":
            outcome = (
                retval
                if retval is not None
                else "skipped (finished already, claimed by another worker, or trained in another run's slice)"
            )
            log.info("run %s: %s", args[0], outcome)
        else:
            log.warning("run %s: task ended in state %s (%s)", args[0], state, retval)

    signals.task_prerun.connect(started, weak=False, dispatch_uid="eos-run-started")
    signals.task_postrun.connect(ended, weak=False, dispatch_uid="eos-run-ended")


@app.command()
def worker(
    queue: Annotated[str, typer.Option(help="gpu or cpu")] = "cpu",
    name: Annotated[str | None, typer.Option(help="worker node name")] = None,
    beat: Annotated[bool, typer.Option(help="also run the reaper on a schedule (Celery beat)")] = False,
) -> None:
    """A Celery worker for one queue: solo pool, one run at a time, nothing forked after CUDA.

    Logs (stderr) its settings at start, then each run it starts and how it ended."""
    if queue not in ("gpu", "cpu"):
        _fail("--queue must be gpu or cpu")
    from store.db import database_url, make_engine, session_factory, verify_schema
    from worker.celery_app import app as celery_app
    from worker.presence import Presence
    from worker.runner import worker_name
    from worker.settings import WorkerSettings

    log = _configure_logging()
    settings = WorkerSettings()
    url = settings.database_url or database_url()
    log.info(
        "eos worker starting: queue %s, broker %s%s, database %s, heartbeat every %g s, stale after %g s%s",
        queue,
        redact(settings.broker_url),
        f" (key prefix {settings.broker_prefix!r})" if settings.broker_prefix else "",
        redact(url),
        settings.heartbeat_seconds,
        settings.stale_seconds,
        f", reaper (beat) every {settings.reap_every:g} s" if beat else "",
    )
    engine = make_engine(url)
    verify_schema(engine)
    _log_run_tasks(log)
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
    # The store knows this worker is alive and serves `queue` (store/workers.py): runs of device
    # auto are routed to a served queue, and a queue nobody serves is shown as such.
    presence = Presence(session_factory(engine), name or f"{queue}@{worker_name()}", queue, settings.presence_seconds)
    presence.start()
    try:
        celery_app.worker_main(argv)
    finally:
        presence.stop()


@app.command()
def reaper(
    once: Annotated[bool, typer.Option(help="one pass, then exit")] = False,
) -> None:
    """Requeue runs whose worker died or whose broker message was lost.

    Logs (stderr) its settings at start, and every run it requeues or gives up on."""
    from store.db import database_url
    from worker.reaper import reap, reap_forever
    from worker.settings import WorkerSettings

    log = _configure_logging()
    settings = WorkerSettings()
    url = settings.database_url or database_url()
    log.info(
        "eos reaper starting: %s, broker %s%s, database %s, stale after %g s, queued runs checked after %g s, "
        "%d attempts per run",
        "one pass" if once else f"a pass every {settings.reap_every:g} s",
        redact(settings.broker_url),
        f" (key prefix {settings.broker_prefix!r})" if settings.broker_prefix else "",
        redact(url),
        settings.stale_seconds,
        settings.queue_check_seconds,
        settings.max_attempts,
    )
    sessions = _sessions(url)
    if once:
        outcome = reap(sessions, settings)
        console.print(f"requeued {outcome['requeued']}, failed {outcome['failed']}")
        return
    reap_forever(sessions, settings)  # each requeue and failure is logged by worker.reaper


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
