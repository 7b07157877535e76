"""Recovery from faults and a burst of submissions, with the project's DEFAULT settings (issue 8 item 8).

Each scenario starts its own PostgreSQL 15 (initdb on a free port) and redis-server, never the
shared ones, and the project's processes against them: `python -m api` (what `eos serve` runs),
two `eos worker --queue cpu` and `eos reaper`, with no EOS_* variable but the two URLs, so every
timing (stale heartbeat, reaper period, queue check, ...) is the project's default. Runs are tiny
linear models of `--steps` steps (a few seconds each), submitted over HTTP.

    worker SIGKILL      a worker SIGKILLed mid-run while the other runs: time until the killed run
                        runs again, and until every run completed
    Redis restart       redis-server SIGKILLed mid-run (runs running, others waiting in its queue),
                        one POST while it is down, started again empty after 5 s: time until every
                        run completed
    PostgreSQL outage   stopped (pg_ctl -m fast) mid-run for 20 s, then started: time from its
                        return until every run completed; GET and POST answers during the outage
    burst               500 POST /experiments spread evenly over 10 s (open loop, asyncio + httpx,
                        one connection per request, 60 s client timeout) against one API, no
                        worker: answered within 10 s, 201s, 429/503 with Retry-After, timeouts,
                        latency, and experiments in the database whose POST got no 201

A scenario that has not recovered by its deadline (`--deadline`, 300 s after the fault) is
reported as "not recovered within N s". Every run is checked in the database at the end: status
`completed`, exactly one trace row per step 0..steps, nothing left queued or running.

    .venv/bin/python bench/faults.py                  # about 15 minutes when nothing recovers
    .venv/bin/python bench/faults.py --quick          # smaller runs, a 90 s deadline, 250 POSTs
    .venv/bin/python bench/faults.py --only burst --out bench/results/$(date +%F)-faults.txt

Run it from the repository root (or with PYTHONPATH pointing at it): the processes run the code
of the checkout this file is in. Needs root or the postgres OS user's rights for initdb.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.scenarios import (  # noqa: E402  (the repository root is put on the path first)
    BurstFigures,
    Config,
    Outcome,
    burst,
    postgres_outage,
    redis_restart,
    worker_sigkill,
)

SCENARIOS = ("worker", "redis", "postgres", "burst")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, a 90 s deadline, 250 POSTs over 5 s")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--deadline", type=float, default=None, help="seconds after a fault before giving up")
    parser.add_argument("--runs", type=int, default=None, help="runs per fault scenario (default 4)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 5000)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default bench/results/DATE-faults.txt)")
    parser.add_argument("--keep", action="store_true", help="keep each cluster's folder and logs")
    return parser.parse_args(argv)


def config_of(args: argparse.Namespace) -> Config:
    quick = args.quick
    return Config(
        runs=args.runs or (3 if quick else 4),
        steps=args.steps or (3000 if quick else 5000),
        deadline=args.deadline or (90.0 if quick else 300.0),
        requests=250 if quick else 500,
        spread=5.0 if quick else 10.0,
        drain=120.0 if quick else 600.0,
        keep_dir=args.keep,
    )


def code_version() -> str:
    """The commit of this checkout, and whether it has uncommitted changes (read-only git calls)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{ROOT} at {git('rev-parse', '--short', 'HEAD') or 'unknown commit'}{dirty}"


def run_fault(name: str, scenario: Callable[[Config], Outcome], config: Config) -> Outcome:
    print(f"... {name}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        outcome = scenario(config)
    except Exception as exc:  # the harness failed before or during the fault: report it, go on
        outcome = Outcome(name, notes=[f"scenario error: {exc!r}"[:500]])
    outcome.figures["wall_s"] = round(time.monotonic() - started)
    return outcome


def run_burst(config: Config) -> tuple[BurstFigures | None, Outcome]:
    print("... burst", file=sys.stderr, flush=True)
    try:
        return burst(config)
    except Exception as exc:
        return None, Outcome("burst", notes=[f"scenario error: {exc!r}"[:500]])


def fault_table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| scenario | recovered | recovery s | notes |", "|---|---|---|---|"]
    for o in outcomes:
        seconds = "-" if o.seconds is None else f"{o.seconds:.1f}"
        notes = "; ".join([*o.notes, *o.problems]).replace("|", "/")
        lines.append(f"| {o.scenario} | {'yes' if o.recovered else 'no'} | {seconds} | {notes} |")
    return lines


def seconds(value: float) -> str:
    return "no answer" if value == float("inf") else f"{value:.2f} s"


def burst_table(figures: BurstFigures, config: Config) -> list[str]:
    f = figures
    drained = "not within the drain time" if f.drained_after is None else f"{f.drained_after:.1f} s"
    rows = [
        ("requests", f"{f.requests} POST /api/v1/experiments over {f.spread:.0f} s"),
        (f"answered within {config.answer_within:.0f} s", f"{f.answered_in_time} / {f.requests}"),
        ("201 Created", str(f.created)),
        ("429 or 503", f"{f.refused} ({f.refused_with_retry_after} with Retry-After)"),
        ("other statuses", ", ".join(f"{k}: {v}" for k, v in sorted(f.other.items())) or "none"),
        (f"timed out ({config.client_timeout:.0f} s client timeout)", str(f.timed_out)),
        ("transport errors", ", ".join(f"{k}: {v}" for k, v in f.errors.items()) or "none"),
        ("latency p50 / p99 (no answer: infinite)", f"{seconds(f.p50)} / {seconds(f.p99)}"),
        ("burst experiments in the database", str(f.experiments)),
        ("experiments without a 201", f"{f.without_201} ({f.runs_without_201} runs)"),
        ("of which created after every client was done", str(f.created_late)),
        ("API done with its requests after the clients (SIGTERM, graceful)", drained),
        ("one POST after the burst", f.post_after),
    ]
    return ["| figure | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]


def report(args: argparse.Namespace, config: Config) -> list[str]:
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    faults = {"worker": ("worker SIGKILL", worker_sigkill), "redis": ("Redis restart", redis_restart)}
    faults["postgres"] = ("PostgreSQL outage", postgres_outage)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Faults: recovery and a burst (bench/faults.py{' --quick' if args.quick else ''}), {stamp}",
        "",
        f"Code: {code_version()}. Settings: the project's defaults (no EOS_* override).",
        f"Per fault scenario: {config.runs} runs of {config.steps} steps, {config.workers} workers, the reaper, "
        f"one API; deadline {config.deadline:.0f} s after the fault; PostgreSQL down {config.outage:.0f} s; "
        f"Redis down {config.redis_down:.0f} s. Recovery: seconds from the fault (PostgreSQL: from its return) "
        "until every run completed. Attempts per run: runs.attempts / events of kind 'attempt'.",
        "",
    ]
    outcomes = [run_fault(*faults[name], config) for name in chosen if name in faults]
    if outcomes:
        lines += [*fault_table(outcomes), ""]
    if "burst" in chosen:
        figures, outcome = run_burst(config)
        lines.append(f"## Burst against one API process (default settings, no worker){_notes(outcome)}")
        lines += ["", *(burst_table(figures, config) if figures else outcome.notes), ""]
    return lines


def _notes(outcome: Outcome) -> str:
    return f" ({'; '.join(outcome.notes)})" if outcome.notes else ""


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    config = config_of(args)
    text = "\n".join(report(args, config))
    print(text)
    out = (
        args.out
        or ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-faults{'-quick' if args.quick else ''}.txt"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
