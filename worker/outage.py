"""Riding out database outages: retry with backoff instead of failing the run.

A worker that loses PostgreSQL for a while (a restart, a failover) keeps its run: the write
that failed is retried, training waits, and when the database is back the run goes on where
it was. Only after `wait_seconds` does the error propagate (the reaper then requeues the run
once its heartbeat is stale).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from store.db import database_unreachable

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0


def with_database(action: Callable[[], T], what: str, wait_seconds: float) -> T:
    """`action()`, retried with exponential backoff while the database is unreachable."""
    deadline = time.monotonic() + wait_seconds
    backoff = FIRST_BACKOFF
    while True:
        try:
            return action()
        except Exception as error:
            if not database_unreachable(error) or time.monotonic() + backoff > deadline:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1f s", what, type(error).__name__, backoff)
            time.sleep(backoff)
            backoff = min(2 * backoff, MAX_BACKOFF)
