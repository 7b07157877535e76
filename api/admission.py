"""Admission control: a bound on the API requests one process serves at once.

Sync routes run in Starlette's thread pool (40 threads) and each holds at most one pooled
database connection (pool size plus overflow: 2 x EOS_DB_POOL_SIZE). Without a bound, a burst
queues behind the pool: requests wait tens of seconds, clients give up, and runs are created
whose client never saw the 201. With it, a request beyond the limit is answered at once with
503, `Retry-After` and a JSON `detail`, before it reads its body or touches the database, and
an admitted request finds a free connection.

The count covers the whole request, background tasks included (sending the runs of a new
experiment to the broker, which also uses a connection). Probes (`/health`, `/ready`) and
anything outside the API prefix (the dashboard's static pages, the docs) are not counted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0  # refusals are logged as a count, at most this often


@dataclass
class Admission:
    """The shared state: requests in flight, and how many were refused (for logs and tests)."""

    limit: int  # 0: unlimited
    retry_after: int
    in_flight: int = 0
    refused: int = 0
    peak: int = 0
    _logged_refused: int = field(default=0, repr=False)
    _logged_at: float = field(default=0.0, repr=False)

    def enter(self) -> bool:
        """Admit one request (True) or refuse it (False). Runs on the event loop: no lock needed."""
        if self.limit and self.in_flight >= self.limit:
            self.refused += 1
            self._log_refusals()
            return False
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def _log_refusals(self) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "overloaded: %d request(s) in flight (the limit, EOS_MAX_IN_FLIGHT); %d refused with 503 since %s",
                self.in_flight,
                self.refused - self._logged_refused,
                "the last report" if self._logged_at else "start",
            )
            self._logged_at, self._logged_refused = now, self.refused


class AdmissionControl:
    """Pure ASGI middleware enforcing `admission` on paths under `prefix`, but for `exempt` ones."""

    def __init__(self, app: ASGIApp, admission: Admission, prefix: str, exempt: Collection[str] = ()) -> None:
        self.app = app
        self.admission = admission
        self.prefix = prefix.rstrip("/") + "/"
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._counted(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not self.admission.enter():
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()

    def _counted(self, path: str) -> bool:
        return path.startswith(self.prefix) and path not in self.exempt

    async def _refuse(self, send: Send) -> None:
        retry = self.admission.retry_after
        detail = f"the server is busy: {self.admission.limit} requests are already in progress; retry in {retry} s"
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
