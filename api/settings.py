"""API settings, from environment variables (EOS_*). One class for the whole API process."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_request_bytes: int = Field(
        default=1_000_000, ge=1, description="request bodies larger than this are refused with 413 before being parsed"
    )
    db_pool_size: int = Field(
        default=10, ge=1, description="database connections kept open per API process (as many again may overflow)"
    )
