"""Session-wide: the broker prefix every process started by the tests inherits, and clean-up."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .resources import BROKER_PREFIX, clear_broker

# Set before any test module imports worker.celery_app (which reads it once).
os.environ["EOS_BROKER_PREFIX"] = BROKER_PREFIX


@pytest.fixture(scope="session", autouse=True)
def _session_resources() -> Iterator[None]:
    yield
    from .postgres import drop_session_databases

    clear_broker()
    drop_session_databases()
