"""The faults of issue 8, each a function that starts a private cluster, injects its fault, waits
up to a deadline and checks the store; tests/faults/test_faults.py asserts on what they return,
bench/faults.py prints it.

- `worker_sigkill`: a worker SIGKILLed mid-run while a second one runs;
- `redis_restart`: Redis SIGKILLed mid-run and restarted empty (a submission made while it is down);
- `postgres_outage`: PostgreSQL stopped mid-run for `Config.outage` seconds, then started;
- `burst`: `Config.requests` POST /experiments spread over `Config.spread` seconds against one API.

Runs are submitted over HTTP, as a client does, and read back straight from the database: every
run must end `completed` with exactly one trace row per step 0..steps and nothing may be left
queued or running (`check_runs`). `Config.settings` holds EOS_* overrides; empty, the processes
run with the project's defaults.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from sqlalchemy import RowMapping, text
from sqlalchemy.exc import DBAPIError

from store.traces import trace_steps

from .services import Cluster, Process, poll_until, wait_until

UNFINISHED = ("queued", "running")
# A run is mid-run once it has reported progress (a heartbeat with a step), or after this many
# seconds of running whatever it reported.
SETTLE = 8.0


def cheap_spec(steps: int) -> dict[str, Any]:
    """A linear model on 24 points measuring the loss only: a few ms a step on a loaded 2-core CPU."""
    return {
        "name": "fault",
        "seed": 0,
        "device": "cpu",
        "dataset": {"kind": "gaussian_mixture", "classes": 3, "per_class": 8, "dim": 4},
        "model": {"kind": "linear"},
        "optimizer": {"lr": 1.0, "batch_size": 4, "steps": steps},
        "instrument": {"drift_samples": 0, "sharpness_every": 0, "test_every": 0},
    }


@dataclass(frozen=True)
class Config:
    settings: Mapping[str, str] = field(default_factory=dict)  # EOS_* overrides; none: the project's defaults
    runs: int = 4  # runs submitted (one sweep over the seed)
    steps: int = 5000  # steps per run
    workers: int = 2
    deadline: float = 300.0  # seconds after the fault (PostgreSQL: after its return) before giving up
    outage: float = 20.0  # seconds PostgreSQL stays down
    redis_down: float = 5.0  # seconds between killing Redis and starting it again, empty
    requests: int = 500  # burst: POSTs ...
    spread: float = 10.0  # ... evenly spread over this many seconds
    answer_within: float = 10.0  # burst: an answer later than this does not count as answered
    client_timeout: float = 60.0  # burst: a client gives up after this long
    drain: float = 600.0  # burst: at most this long for the API to finish its requests once the clients are done
    keep_dir: bool = False  # keep the cluster's folder (logs) after the scenario


@dataclass
class Outcome:
    """What a fault scenario measured: `seconds` from the fault (PostgreSQL: its return) until every run completed."""

    scenario: str
    recovered: bool = False
    seconds: float | None = None
    figures: dict[str, float | int | str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the checks of the store found
    logs: str = ""  # the tail of every log, for a failing test


# --- reading the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    id: int
    status: str
    step: int
    steps: int
    attempts: int
    worker: str | None
    task_id: str | None


def run_rows(cluster: Cluster) -> list[RunRow] | None:
    """Every run, straight from the database; None while it cannot be reached."""
    try:
        with cluster.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM runs ORDER BY id")).mappings().all()
    except DBAPIError:
        return None
    return [_run_row(row) for row in rows]


def _run_row(row: RowMapping) -> RunRow:
    """Read by name, and the optional columns leniently: the lifecycle's columns may change."""
    return RunRow(
        id=int(row["id"]),
        status=str(row["status"]),
        step=int(row.get("step") or 0),
        steps=int(row["steps"]),
        attempts=int(row.get("attempts") or 0),
        worker=row.get("worker"),
        task_id=row.get("task_id"),
    )


def attempt_events(cluster: Cluster) -> dict[int, int]:
    """Events of kind 'attempt' per run (claims by workers, and requeues by the reaper)."""
    with cluster.engine.connect() as conn:
        rows = conn.execute(text("SELECT run_id, count(*) FROM events WHERE kind = 'attempt' GROUP BY run_id")).all()
    return {int(run_id): int(count) for run_id, count in rows}


def all_finished(cluster: Cluster) -> bool:
    rows = run_rows(cluster)
    return rows is not None and bool(rows) and all(r.status not in UNFINISHED for r in rows)


def check_runs(cluster: Cluster) -> tuple[list[str], list[str]]:
    """(problems, notes): every run completed, one trace row per step 0..steps, nothing queued or running."""
    rows = run_rows(cluster)
    if rows is None:
        return ["the database cannot be read"], []
    problems = [f"run {r.id} is {r.status}" for r in rows if r.status != "completed"]
    for row in rows:
        problems += _trace_problems(cluster, row)
    left = [r.id for r in rows if r.status in UNFINISHED]
    if left:
        problems.append(f"left queued or running: runs {left}")
    events = attempt_events(cluster)
    shown = ", ".join(f"{r.id}: {r.attempts}/{events.get(r.id, 0)}" for r in rows)
    return problems, [f"attempts per run (claims/attempt events) {shown}"]


def _trace_problems(cluster: Cluster, row: RunRow) -> list[str]:
    with cluster.sessions() as session:
        steps = np.asarray(trace_steps(session=session, run_id=row.id))
    expected = np.arange(row.steps + 1)
    if np.array_equal(steps, expected):
        return []
    duplicated = len(steps) - len(np.unique(steps))
    missing = len(np.setdiff1d(expected, steps))
    return [
        f"run {row.id}: {len(steps)} trace rows for steps 0..{row.steps} ({duplicated} duplicated, {missing} missing)"
    ]


def process_notes(cluster: Cluster) -> list[str]:
    """Processes that died on their own, with the last line they logged."""
    notes = []
    for process in cluster.processes:
        if not process.alive and not process.ended:
            notes.append(f"{process.name} exited with {process.proc.returncode}: {_last_error(process.output())}")
    return notes


def _last_error(log: str) -> str:
    """The last exception line of a log (`module.Error: message`), else its last line."""
    lines = [line for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if ("Error" in line or "Exception" in line) and not line[0].isspace()]
    errors = [line for line in errors if not line.startswith(("(Background", "Traceback"))]
    return (errors or lines or [""])[-1][:300]


# --- driving the API ------------------------------------------------------------------------------


def submit(api: str, token: str, spec: dict[str, Any], runs: int, timeout: float = 60.0) -> httpx.Response:
    """POST /experiments: one run per seed 0..runs-1."""
    body = {"spec": spec, "sweep": {"seed": list(range(runs))}}
    return httpx.post(f"{api}/api/v1/experiments", json=body, headers=_auth(token), timeout=timeout)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _answer(call: Callable[[], httpx.Response]) -> str:
    """A request's status and content type, or why it got none."""
    try:
        response = call()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    kind = response.headers.get("content-type", "").split(";")[0]
    return f"{response.status_code} {kind}".strip()


def _start(cluster: Cluster, config: Config) -> tuple[str, str, list[Process]]:
    """API, workers and reaper up, a user, and `config.runs` runs submitted; (api url, token, workers)."""
    api, workers = cluster.start_all(config.workers)
    token = cluster.create_user()
    created = submit(api, token, cheap_spec(config.steps), config.runs)
    if created.status_code != 201:
        raise RuntimeError(f"submission refused: {created.status_code} {created.text}")
    return api, token, workers


class _Seen:
    """Runs mid-run: running and past step 0, or running for SETTLE seconds (when each was first seen)."""

    def __init__(self) -> None:
        self.since: dict[tuple[int, int], float] = {}

    def settled(self, rows: list[RunRow]) -> list[RunRow]:
        now = time.monotonic()
        running = [r for r in rows if r.status == "running"]
        for row in running:
            self.since.setdefault((row.id, row.attempts), now)
        return [r for r in running if r.step > 0 or now - self.since[(r.id, r.attempts)] >= SETTLE]


def _wait_busy(cluster: Cluster, config: Config, queued: int) -> list[RunRow]:
    """Wait until every worker is mid-run and at least `queued` runs wait; returns the running rows."""
    seen = _Seen()
    found: list[RunRow] = []

    def busy() -> bool:
        rows = run_rows(cluster) or []
        found[:] = seen.settled(rows)
        waiting = sum(r.status == "queued" for r in rows)
        return len(found) >= config.workers and waiting >= queued

    wait_until(busy, 180, f"{config.workers} runs under way and {queued} queued")
    return found


def _holder(row: RunRow, workers: list[Process]) -> Process | None:
    """The worker process holding `row`: runs.worker names its pid or its --name, or its log names the task."""
    for worker in workers:
        name = worker.argv_name
        if row.worker and (row.worker.endswith(f":{worker.pid}") or (name is not None and name in row.worker)):
            return worker
    for worker in workers:
        if row.task_id and row.task_id in worker.output():
            return worker
    return None


def _finish(cluster: Cluster, outcome: Outcome, since: float, deadline: float, config: Config) -> None:
    """Wait for every run to finish (or the deadline), then check the store."""
    done = poll_until(lambda: all_finished(cluster), deadline, interval=0.5)
    problems, notes = check_runs(cluster)
    outcome.problems += problems
    outcome.notes += notes + process_notes(cluster)
    outcome.recovered = done is not None and not problems
    if done is None:
        outcome.notes.insert(0, f"not recovered within {config.deadline:.0f} s")
    else:
        outcome.seconds = round(done - since, 1)


def _scenario(name: str, config: Config, body: Callable[[Cluster, Outcome], None]) -> Outcome:
    """Run `body` on a fresh cluster; the cluster is gone afterwards, whatever happened."""
    outcome = Outcome(name)
    with Cluster(config.settings, keep_dir=config.keep_dir) as cluster:
        try:
            body(cluster, outcome)
        except BaseException:
            outcome.logs = cluster.logs()
            print(outcome.logs, file=sys.stderr)  # shown by pytest on failure; the folder is about to go
            raise
        outcome.logs = cluster.logs()
    return outcome


# --- (a) a worker SIGKILLed mid-run ---------------------------------------------------------------


def worker_sigkill(config: Config) -> Outcome:
    """SIGKILL the worker of a run under way while another worker runs; time until that run runs again
    (figure `rerun_s`) and until every run completed."""
    return _scenario("worker SIGKILL", config, lambda cluster, outcome: _worker_sigkill(cluster, config, outcome))


def _worker_sigkill(cluster: Cluster, config: Config, outcome: Outcome) -> None:
    _, _, workers = _start(cluster, config)
    victim, holder = _victim(cluster, workers)
    holder.kill()
    killed_at = time.monotonic()
    deadline = killed_at + config.deadline
    again = poll_until(lambda: _runs_again(cluster, victim), deadline, interval=0.5)
    outcome.figures["killed_run"] = victim.id
    outcome.figures["rerun_s"] = None if again is None else round(again - killed_at, 1)
    if again is None:
        outcome.notes.append(f"killed run {victim.id} not running again within {config.deadline:.0f} s")
    else:
        outcome.notes.append(f"killed run {victim.id} running again {again - killed_at:.1f} s after the kill")
    _finish(cluster, outcome, killed_at, deadline, config)


def _victim(cluster: Cluster, workers: list[Process]) -> tuple[RunRow, Process]:
    """A run under way for SETTLE seconds, and the worker that holds it."""
    seen = _Seen()
    found: list[tuple[RunRow, Process]] = []

    def under_way() -> bool:
        for row in seen.settled(run_rows(cluster) or []):
            holder = _holder(row, workers)
            if holder is not None:
                found.append((row, holder))
                return True
        return False

    wait_until(under_way, 180, "a run under way on one of the workers")
    return found[0]


def _runs_again(cluster: Cluster, victim: RunRow) -> bool:
    """A later attempt of the killed run has claimed it (or it finished)."""
    rows = run_rows(cluster) or []
    row = next((r for r in rows if r.id == victim.id), None)
    return row is not None and (row.attempts > victim.attempts or row.status not in UNFINISHED)


# --- (b) Redis SIGKILLed and restarted empty ------------------------------------------------------


def redis_restart(config: Config) -> Outcome:
    """SIGKILL Redis while runs run and others wait in its queue, POST a run while it is down, start it
    again empty after `config.redis_down` s; time from the kill until every run completed."""
    return _scenario("Redis restart", config, lambda cluster, outcome: _redis_restart(cluster, config, outcome))


def _redis_restart(cluster: Cluster, config: Config, outcome: Outcome) -> None:
    api, token, _ = _start(cluster, config)
    running = _wait_busy(cluster, config, queued=1)
    before = {r.id for r in run_rows(cluster) or []}
    cluster.redis.kill()
    killed_at = time.monotonic()
    probe = _Background(lambda: _answer(lambda: submit(api, token, cheap_spec(config.steps), 1, timeout=30)))
    time.sleep(max(0.0, killed_at + config.redis_down - time.monotonic()))
    cluster.redis.start()
    back_at = time.monotonic()
    answer = probe.result(40)
    outcome.figures["post_while_down"] = answer
    outcome.notes.append(f"{len(running)} runs running at the kill; POST while Redis was down: {answer}")
    _probe_started(cluster, outcome, before, back_at, killed_at + config.deadline)
    _finish(cluster, outcome, killed_at, killed_at + config.deadline, config)


def _probe_started(cluster: Cluster, outcome: Outcome, before: set[int], back_at: float, deadline: float) -> None:
    """How long after Redis returned the runs submitted while it was down started (figure `probe_started_s`)."""
    probe = {r.id for r in run_rows(cluster) or []} - before
    outcome.figures["probe_runs"] = len(probe)
    if not probe:
        outcome.figures["probe_started_s"] = None
        return

    def started() -> bool:
        rows = [r for r in run_rows(cluster) or [] if r.id in probe]
        return all(r.attempts > 0 or r.status not in UNFINISHED for r in rows)

    at = poll_until(started, deadline, interval=0.5)
    outcome.figures["probe_started_s"] = None if at is None else round(at - back_at, 1)
    shown = "never" if at is None else f"{at - back_at:.1f} s after Redis returned"
    outcome.notes.append(f"the run submitted while Redis was down started {shown}")


class _Background:
    """A call in a thread: its result later."""

    def __init__(self, call: Callable[[], str]) -> None:
        self.value = "no answer"
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], str]) -> None:
        self.value = call()

    def result(self, timeout: float) -> str:
        self.thread.join(timeout)
        return self.value


# --- (c) PostgreSQL stopped for a while -----------------------------------------------------------


def postgres_outage(config: Config) -> Outcome:
    """Stop PostgreSQL while runs run and others wait, for `config.outage` s; time from its return until
    every run completed. GET and POST /experiments are tried during the outage."""
    return _scenario("PostgreSQL outage", config, lambda cluster, outcome: _postgres_outage(cluster, config, outcome))


def _postgres_outage(cluster: Cluster, config: Config, outcome: Outcome) -> None:
    api, token, _ = _start(cluster, config)
    running = _wait_busy(cluster, config, queued=1)
    cluster.postgres.stop("fast")
    stopped_at = time.monotonic()
    time.sleep(min(2.0, config.outage / 2))
    get = _answer(lambda: httpx.get(f"{api}/api/v1/experiments", headers=_auth(token), timeout=10))
    post = _answer(lambda: submit(api, token, cheap_spec(config.steps), 1, timeout=10))
    outcome.figures.update(get_while_down=get, post_while_down=post)
    outcome.notes.append(f"{len(running)} runs running at the stop; during the outage GET: {get}, POST: {post}")
    time.sleep(max(0.0, stopped_at + config.outage - time.monotonic()))
    cluster.postgres.start()
    back_at = time.monotonic()
    _finish(cluster, outcome, back_at, back_at + config.deadline, config)


# --- (d) a burst of submissions -------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no answer (timed out or the connection failed)
    seconds: float
    retry_after: bool = False
    experiment_id: int | None = None
    error: str | None = None


@dataclass
class BurstFigures:
    requests: int
    spread: float
    answered_in_time: int  # any status within Config.answer_within seconds
    created: int  # 201
    refused: int  # 429 or 503
    refused_with_retry_after: int
    other: dict[int, int]  # any other status -> count
    timed_out: int
    errors: dict[str, int]  # transport errors other than timeouts
    p50: float  # seconds; inf when fewer than half were answered
    p99: float
    experiments: int = 0  # made by the burst, counted once the API finished its last request (or at the drain deadline)
    without_201: int = 0  # of which no client got a 201
    runs_without_201: int = 0
    created_late: int = 0  # of which created after every client had its answer or gave up
    post_after: str = ""  # one more POST right after the burst: status and latency
    drained_after: float | None = None  # s from the clients' end until the API, sent SIGTERM, finished its requests


def burst(config: Config) -> tuple[BurstFigures, Outcome]:
    """`config.requests` POST /experiments spread over `config.spread` s against one API process (no worker).

    Once every client has its answer or gave up, one more POST is timed, then the API is sent SIGTERM:
    uvicorn finishes the requests it holds before exiting, so the experiments counted afterwards are
    all the burst made (unless it is still busy `config.drain` s later: then a lower bound).
    """
    figures: list[BurstFigures] = []
    outcome = _scenario("burst", config, lambda cluster, outcome: figures.append(_burst(cluster, config, outcome)))
    return figures[0], outcome


def _burst(cluster: Cluster, config: Config, outcome: Outcome) -> BurstFigures:
    api = cluster.start_api()
    token = cluster.create_user()
    # A thread of its own: the caller may already run an event loop (pytest plugins, Playwright).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(asyncio.run, _fire(api, token, config)).result()
    done_at = time.monotonic()
    at_done = _burst_experiments(cluster)
    post_after = _timed(lambda: submit(api, token, cheap_spec(50), 1, timeout=config.client_timeout))
    drained = _drain(cluster.process("api"), done_at + config.drain)
    experiments = _burst_experiments(cluster)
    figures = _burst_figures(answers, config, experiments)
    figures.created_late = len(experiments.keys() - at_done.keys())
    figures.post_after = post_after
    figures.drained_after = None if drained is None else round(drained - done_at, 1)
    if drained is None:
        outcome.notes.append(f"the API was still busy {config.drain:.0f} s after the clients: counts are lower bounds")
    outcome.notes += process_notes(cluster)
    outcome.recovered = figures.answered_in_time == config.requests and figures.without_201 == 0
    return figures


async def _fire(api: str, token: str, config: Config) -> list[Answer]:
    """Open loop: request i leaves at i * spread / requests seconds, whatever the earlier ones got."""
    limits = httpx.Limits(max_connections=config.requests + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(config.client_timeout)
    async with httpx.AsyncClient(base_url=api, headers=_auth(token), timeout=timeout, limits=limits) as client:
        start = time.monotonic()
        calls = [_post_at(client, start + i * config.spread / config.requests, i) for i in range(config.requests)]
        return list(await asyncio.gather(*calls))


async def _post_at(client: httpx.AsyncClient, at: float, i: int) -> Answer:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    body = {"spec": cheap_spec(50), "name": f"burst-{i}"}
    sent = time.monotonic()
    try:
        response = await client.post("/api/v1/experiments", json=body)
    except httpx.TimeoutException:
        return Answer(None, time.monotonic() - sent, error="timeout")
    except httpx.HTTPError as exc:
        return Answer(None, time.monotonic() - sent, error=type(exc).__name__)
    created = response.json().get("id") if response.status_code == 201 else None
    return Answer(response.status_code, time.monotonic() - sent, "retry-after" in response.headers, created)


def _timed(call: Callable[[], httpx.Response]) -> str:
    started = time.monotonic()
    answer = _answer(call)
    return f"{answer} after {time.monotonic() - started:.2f} s"


def _burst_experiments(cluster: Cluster) -> dict[int, int]:
    """The burst's experiments (named burst-N) -> their number of runs."""
    sql = (
        "SELECT e.id, count(r.id) FROM experiments e LEFT JOIN runs r ON r.experiment_id = e.id "
        "WHERE e.name LIKE 'burst-%' GROUP BY e.id"
    )
    with cluster.engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    return {int(e): int(n) for e, n in rows}


def _drain(api: Process, deadline: float) -> float | None:
    """SIGTERM the API and wait until it exited (uvicorn first finishes the requests it holds): when, or None."""
    api.terminate()
    return poll_until(lambda: not api.alive, deadline, interval=0.5)


def _burst_figures(answers: list[Answer], config: Config, experiments: dict[int, int]) -> BurstFigures:
    statuses = [a.status for a in answers]
    refused = [a for a in answers if a.status in (429, 503)]
    other: dict[int, int] = {}
    errors: dict[str, int] = {}
    for answer in answers:
        if answer.status is not None and answer.status not in (201, 429, 503):
            other[answer.status] = other.get(answer.status, 0) + 1
        if answer.error is not None and answer.error != "timeout":
            errors[answer.error] = errors.get(answer.error, 0) + 1
    latencies = np.array([a.seconds if a.status is not None else np.inf for a in answers])
    created = {a.experiment_id for a in answers if a.experiment_id is not None}
    orphans = [e for e in experiments if e not in created]
    return BurstFigures(
        requests=config.requests,
        spread=config.spread,
        answered_in_time=sum(a.status is not None and a.seconds <= config.answer_within for a in answers),
        created=statuses.count(201),
        refused=len(refused),
        refused_with_retry_after=sum(a.retry_after for a in refused),
        other=other,
        timed_out=sum(a.error == "timeout" for a in answers),
        errors=errors,
        p50=float(np.percentile(latencies, 50, method="higher")),
        p99=float(np.percentile(latencies, 99, method="higher")),
        experiments=len(experiments),
        without_201=len(orphans),
        runs_without_201=sum(experiments[e] for e in orphans),
    )
