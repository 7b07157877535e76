"""Faults on a private cluster (issue 8 item 5): a worker SIGKILLed, Redis killed and restarted empty,
PostgreSQL stopped for 20 s, a burst of 500 submissions. Each ends with every run completed exactly
once (one trace row per step, no duplicates) and nothing left queued or running.

Short timings through EOS_* variables (a dead worker is presumed so after 5 s, the reaper passes
every second) keep the file near 90 s on a 2-core machine; bench/faults.py measures the defaults.
"""

from __future__ import annotations

import os

import pytest

from .scenarios import Config, Outcome, burst, postgres_outage, redis_restart, worker_sigkill
from .services import PG_BIN, REDIS_SERVER

SHORT = {
    "EOS_STALE_SECONDS": "5",
    "EOS_HEARTBEAT_SECONDS": "0.5",
    "EOS_REAP_EVERY": "1",
    "EOS_QUEUE_CHECK_SECONDS": "1",
    # Slices of two: with 5 runs and 2 workers, each worker trains a slice and one run waits queued.
    "EOS_SLICE_RUNS": "2",
}
# 12,000 steps: a slice of two takes seconds, long enough to be caught mid-run.
CONFIG = Config(settings=SHORT, runs=5, steps=12000, deadline=60.0, outage=20.0, redis_down=3.0)

MISSING = [str(p) for p in (PG_BIN / "initdb", PG_BIN / "pg_ctl", REDIS_SERVER) if not os.access(p, os.X_OK)]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"the fault tests start their own servers; missing {MISSING}"),
]


def assert_recovered(outcome: Outcome) -> None:
    """Every run completed once, one row per step, nothing queued or running, within the deadline."""
    report = "\n".join([*outcome.notes, *outcome.problems])
    assert not outcome.problems, f"{outcome.scenario}:\n{report}\n{outcome.logs}"
    assert outcome.recovered, f"{outcome.scenario}:\n{report}\n{outcome.logs}"


def test_a_worker_killed_mid_run_loses_nothing() -> None:
    outcome = worker_sigkill(CONFIG)
    assert_recovered(outcome)
    assert outcome.figures["rerun_s"] is not None


def test_redis_killed_and_restarted_empty_loses_nothing() -> None:
    outcome = redis_restart(CONFIG)
    assert_recovered(outcome)
    # Submitted while Redis was down: refused with 503 (nothing created) or created and then run.
    answer = str(outcome.figures["post_while_down"])
    assert answer.startswith(("201", "503")), answer
    assert answer.startswith("201") == (outcome.figures["probe_runs"] == 1), outcome.figures
    if answer.startswith("201"):  # sent within seconds of Redis's return
        started = outcome.figures["probe_started_s"]
        assert isinstance(started, float) and started <= 15, outcome.figures


def test_postgres_down_for_20_seconds_loses_nothing() -> None:
    outcome = postgres_outage(CONFIG)
    assert_recovered(outcome)
    for request in ("get_while_down", "post_while_down"):
        assert outcome.figures[request] == "503 application/json", outcome.figures


def test_a_burst_of_500_submissions_is_answered_and_creates_nothing_unannounced() -> None:
    config = Config(requests=500, spread=10.0, client_timeout=15.0, drain=30.0)
    figures, outcome = burst(config)
    shown = f"{figures}\n{outcome.notes}\n{outcome.logs}"
    assert figures.answered_in_time == figures.requests, shown
    assert figures.created + figures.refused == figures.requests, shown
    assert figures.refused_with_retry_after == figures.refused, shown
    assert figures.without_201 == 0, shown
