"""Is the broker reachable? Asked before a submission creates anything (policy: while Redis is
down, POST /experiments is refused with 503 and nothing is created).

One Redis PING with a short socket timeout and no retries. The answer, healthy or not, is kept
for CACHE_S, so a burst of submissions pings about once a second rather than once per request,
and a burst while Redis hangs does not wait PING_TIMEOUT_S per request. A send that still fails
after the commit (Redis died in between) leaves the runs queued for the reaper.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 0.5
CACHE_S = 1.0


def connect(url: str, timeout: float) -> None:
    """Connect to the broker once (kombu, any transport), or raise why not."""
    with Connection(url, connect_timeout=timeout) as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)


class BrokerCheck:
    def __init__(self, url: str, *, timeout: float = PING_TIMEOUT_S, cache_s: float = CACHE_S) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_s = cache_s
        self.pings = 0  # how many times the broker was actually asked (tests read it)
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._error: str | None = None
        self._client: redis.Redis | None = None

    def error(self) -> str | None:
        """None when the broker answered within the last CACHE_S, else why it is unreachable."""
        with self._lock:  # one ping at a time; the others wait for its answer and reuse it
            if time.monotonic() - self._checked_at >= self.cache_s:
                self._error = self._ping()
                self._checked_at = time.monotonic()
                if self._error is not None:
                    log.warning(
                        "broker %s unreachable: %s; submissions are refused with 503", self._where(), self._error
                    )
            return self._error

    def _ping(self) -> str | None:
        self.pings += 1
        try:
            if urlsplit(self.url).scheme in ("redis", "rediss", "unix"):
                self._redis().ping()
            else:
                connect(self.url, self.timeout)
        except Exception as exc:  # any failure is the answer: unreachable, and why
            return f"{type(exc).__name__}: {exc}"
        return None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0)
            )
        return self._client

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
