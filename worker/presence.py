"""A worker's presence: a thread that tells the store, every few seconds, that this worker is
alive and which queue it serves (store/workers.py). Database outages are logged and ridden out."""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy.orm import Session, sessionmaker

from store import workers

log = logging.getLogger(__name__)


class Presence(threading.Thread):
    def __init__(self, sessions: sessionmaker[Session], name: str, queue: str, every: float = 10.0) -> None:
        super().__init__(name="eos-presence", daemon=True)
        self.sessions, self.worker, self.queue, self.every = sessions, name, queue, every
        self._stop_event = threading.Event()

    def beat(self) -> None:
        with self.sessions.begin() as session:
            workers.beat(
                session=session, name=self.worker, queue=self.queue, host=socket.gethostname(), pid=os.getpid()
            )

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as error:  # the database is away: the next beat tries again
                log.warning("worker %s: presence not recorded (%s)", self.worker, type(error).__name__)
            if self._stop_event.wait(self.every):
                return

    def stop(self) -> None:
        """Stop beating and leave the registry, so the queue shows as unserved at once."""
        self._stop_event.set()
        self.join(timeout=self.every + 5)
        try:
            with self.sessions.begin() as session:
                workers.leave(session=session, name=self.worker)
        except Exception as error:
            log.warning("worker %s: could not leave the registry (%s)", self.worker, type(error).__name__)
