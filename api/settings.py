"""API settings, from environment variables (EOS_*). One class for the whole API process."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eos_core.resources import Limits


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EOS_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL (postgresql+psycopg://...); unset means the embedded SQLite file"
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker that runs are sent to (Redis)"
    )
    max_runs_per_sweep: int = Field(
        default=1000, ge=1, description="a sweep expanding to more runs than this is refused"
    )
    max_queued_runs_per_user: int = Field(
        default=5000, ge=0, description="queued plus running runs one user may have; a user's own limit overrides it"
    )
    max_run_memory_gib: float = Field(
        default=8.0,
        ge=0,
        description="a run estimated to need more memory at its peak is refused (422; eos_core.resources); "
        "8 GiB suits a 2-core, 24 GiB worker, raise it on a GPU node; 0: no limit",
    )
    max_run_tflop: float = Field(
        default=1000.0,
        ge=0,
        description="a run estimated to need more work (10^12 floating-point operations) is refused (422); "
        "1000 TFLOP is about a day on one CPU core; 0: no limit",
    )
    max_request_bytes: int = Field(
        default=1_000_000, ge=1, description="request bodies larger than this are refused with 413 before being parsed"
    )
    db_pool_size: int = Field(
        default=10, ge=1, description="database connections kept open per API process (as many again may overflow)"
    )
    db_pool_timeout: float = Field(
        default=3.0,
        gt=0,
        description="seconds a request waits for a free pooled connection before it is answered 503",
    )
    db_connect_timeout: int = Field(
        default=3,
        ge=2,
        description="seconds to open a new PostgreSQL connection before giving up (a 503); libpq waits 2 at least",
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=0,
        description=(
            "API requests (under /api/v1, but for /health and /ready) one process serves at once; more are "
            "refused at once with 503 and Retry-After. Unset: the pool's size plus its overflow "
            "(2 x db_pool_size), so an admitted request never waits for a connection. 0: no limit"
        ),
    )
    retry_after_seconds: int = Field(
        default=2, ge=1, description="the Retry-After of a 503 (overloaded, database or broker unavailable)"
    )

    @property
    def in_flight_limit(self) -> int:
        """max_in_flight, or its default: as many requests as the pool has connections (0: unlimited)."""
        return self.max_in_flight if self.max_in_flight is not None else 2 * self.db_pool_size

    @property
    def run_limits(self) -> Limits:
        return Limits(max_memory_gib=self.max_run_memory_gib, max_tflop=self.max_run_tflop)
