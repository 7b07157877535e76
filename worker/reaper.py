"""The reaper: the database is the source of truth for what should be running.

A running run whose heartbeat went stale (its worker died) and a queued run whose broker
message vanished (a Redis restart, a purge, a send that failed) are requeued and sent again,
up to a retry limit; a queued run of `device: auto` waiting on a queue that no live worker
serves is moved to one that is served (store/workers.py); the lifecycle records each move
as an event. The loop outlives outages
of Redis and PostgreSQL: a pass that fails is logged and tried again with backoff, since
this is the process that recovers everything else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store import lifecycle, workers
from store.lifecycle import RunStatus
from store.models import Run

from .dispatch import enqueue
from .settings import WorkerSettings

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0


class BrokerView:
    """The task ids waiting in each queue or held unacknowledged, read once per pass."""

    def __init__(self, broker_url: str, prefix: str = "") -> None:
        self.url, self.prefix = broker_url, prefix
        self._unacked: bytes | None = None
        self._queues: dict[str, bytes] = {}
        self._redis: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        """One connection pool for the pass, made on first use."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.url)
        return self._redis

    def forget(self, task_id: str | None) -> int:
        """Drop a dead attempt's message from the unacknowledged set (kombu's `unacked` hash and its
        index), where it would otherwise wait out the visibility timeout (7 days) and then be
        redelivered for nothing. Returns how many entries went."""
        if task_id is None or not self.url.startswith("redis"):
            return 0
        needle = task_id.encode()
        entries = self.client.hgetall(self.prefix + "unacked")
        tags = [tag for tag, message in entries.items() if needle in _joined([message])]
        if tags:
            self.client.zrem(self.prefix + "unacked_index", *tags)
            self.client.hdel(self.prefix + "unacked", *tags)
        return len(tags)

    def holds(self, queue: str, task_id: str | None) -> bool:
        if task_id is None:
            return False
        if not self.url.startswith("redis"):
            return True  # other brokers: trust the message while we cannot look
        if self._unacked is None:
            self._unacked = _joined(self.client.hvals(self.prefix + "unacked"))
        if queue not in self._queues:
            self._queues[queue] = _joined(self.client.lrange(self.prefix + queue, 0, -1))
        needle = task_id.encode()
        return needle in self._queues[queue] or needle in self._unacked


def _joined(values: list[bytes | str]) -> bytes:
    return b"\n".join(v if isinstance(v, bytes) else v.encode() for v in values)


def reap(sessions: sessionmaker[Session], settings: WorkerSettings) -> dict[str, list[int]]:
    """One pass: requeue what was lost, fail what ran out of attempts, send what was requeued."""
    requeue: list[int] = []
    failed: list[int] = []
    actions: list[str] = []  # what this pass did, logged once committed
    broker = BrokerView(settings.broker_url, settings.broker_prefix)
    with sessions.begin() as session:
        candidates = lifecycle.stale(
            session=session,
            heartbeat_timeout=timedelta(seconds=settings.stale_seconds),
            queue_timeout=timedelta(seconds=settings.queue_check_seconds),
        )
        for run in candidates:
            if run.status == RunStatus.QUEUED and broker.holds(run.queue, run.task_id):
                continue  # still waiting its turn
            if _out_of_attempts(run, settings.max_attempts):
                error = f"gave up after {run.attempts} attempts (worker lost each time)"
                lifecycle.fail(session=session, run=run, error=error)
                failed.append(run.id)
                actions.append(f"run {run.id} failed: {error}")
                continue
            reason = "heartbeat stale" if run.status == RunStatus.RUNNING else "message lost"
            if run.status == RunStatus.RUNNING:
                broker.forget(run.task_id)  # the dead worker's message, held unacknowledged
            lifecycle.requeue(session=session, run=run, reason=reason)
            requeue.append(run.id)
            actions.append(f"run {run.id} requeued ({reason}, {run.attempts} attempt(s) so far)")
        for run, target in _stranded(session):
            reason = f"rerouted to {target}: no live worker serves {run.queue}"
            run.queue = target
            lifecycle.requeue(session=session, run=run, reason=reason)
            if run.id not in requeue:
                requeue.append(run.id)
            actions.append(f"run {run.id} {reason}")
    for action in actions:  # committed: now they happened
        log.warning("reaper: %s", action)
    if requeue:
        enqueue(requeue, sessions, settings.broker_url)
        log.warning("reaper requeued runs %s (sent to their queues again)", requeue)
    return {"requeued": requeue, "failed": failed}


def reap_forever(
    sessions: sessionmaker[Session],
    settings: WorkerSettings,
    report: Callable[[dict[str, list[int]]], object] = lambda outcome: None,
    stop: threading.Event | None = None,
) -> None:
    """Pass after pass, every `reap_every` seconds; a failed pass (Redis or PostgreSQL away, or
    anything else) is logged and retried with backoff instead of ending the loop."""
    stop = stop or threading.Event()
    backoff = 1.0
    while not stop.is_set():
        try:
            outcome = reap(sessions, settings)
        except Exception as error:
            log.warning("reaper pass failed (%s: %s); next try in %.0f s", type(error).__name__, error, backoff)
            stop.wait(backoff)
            backoff = min(2 * backoff, MAX_BACKOFF, max(settings.reap_every, 1.0))
            continue
        backoff = 1.0
        report(outcome)
        stop.wait(settings.reap_every)


def _stranded(session: Session) -> list[tuple[Run, str]]:
    """Queued runs of `device: auto` waiting on a queue no live worker serves, while another
    queue is served: with the queue each should move to."""
    served = workers.served_queues(session=session)
    if not served:
        return []  # no worker at all: nothing to move to
    waiting = session.scalars(
        select(Run)
        .where(Run.status == RunStatus.QUEUED, Run.queue.not_in(tuple(served)))
        .with_for_update(skip_locked=True)
    )
    moves = [(run, workers.route("auto", served)) for run in waiting if run.spec.get("device", "auto") == "auto"]
    return [(run, target) for run, target in moves if target != run.queue]


def _out_of_attempts(run: Run, max_attempts: int) -> bool:
    return run.status == RunStatus.RUNNING and run.attempts >= max_attempts
